# syntax=docker/dockerfile:1
# Build: a release binary, built exactly as .ci/run builds it (same command, target and features).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin csr-warden

# Run: distroless with glibc (the binary links glibc dynamically), no shell, no package manager,
# as the same non-root UID the manifests set.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/csr-warden /usr/local/bin/csr-warden
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/csr-warden"]
CMD ["run"]
