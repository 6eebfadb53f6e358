//! csr-warden: approves, denies and signs Kubernetes CertificateSigningRequests by policy, and
//! signs PodCertificateRequests.
//!
//! Where to look (each room depends only on the ones above it):
//! - [`policy`]: PURE. Why a CSR was approved, denied or left pending (`policy/mod.rs`: the model,
//!   the rule order, `decide`), each rule family beside it, pod certificate decisions, the one
//!   `Reason` type, and the policy file's schema and validation (`policy/file.rs`).
//! - [`x509`]: PURE. Reading a request strictly, the CA (its key a file, or in a PKCS#11 token:
//!   `x509/pkcs11.rs`), issuing a certificate, its validity.
//! - [`kube`]: talking to the API server, for every controller: the client, request deadlines,
//!   leader election, discovery, Events within limits, the one watch driver and the generic
//!   work queue, workers and retries.
//! - [`facts`]: what the cluster answers that a request cannot say (reviews, Nodes, the API
//!   server's addresses).
//! - [`ops`]: the policy and CA in force and their reloads, metrics, health, logs.
//! - [`csr`]: the CSR controller, on [`kube`]'s runtime.
//! - [`pods`]: the PodCertificateRequest controller, on the same runtime.
//! - [`trust_bundles`]: ClusterTrustBundles for the signers that publish one.
//! - [`check`]: `csr-warden check`, offline and live explain.
//! - [`cli`]: the command line.
//! - [`user`]: the user's side, on the user's machine: `csr-warden request` and the
//!   `credential` exec plugin (a CSR made and followed with the user's kubeconfig; the cache).
#![forbid(unsafe_code)]

/// The name csr-warden reports under: its Events' reporting controller (`reportingComponent`
/// in core/v1, how a restarted process finds the Events it wrote), and the `managed-by` label and
/// name suffix of the ClusterTrustBundles it publishes.
pub const CONTROLLER_NAME: &str = "csr-warden";

pub mod check;
pub mod cli;
pub mod csr;
pub mod facts;
pub mod kube;
pub mod ops;
pub mod pods;
pub mod policy;
pub mod trust_bundles;
pub mod user;
pub mod x509;
