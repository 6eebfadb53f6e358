//! csr-warden: approves, denies and signs Kubernetes CertificateSigningRequests by policy.
//!
//! Where to look:
//! - [`policy`]: why a CSR was approved, denied or left pending (pure, one file).
//! - [`inspect`]: what a PEM request asks for (pure).
//! - [`issue`]: how an approved request becomes a certificate (pure).
//! - [`ca`]: loading the signing CA.
//! - [`config`]: the policy file.
//! - [`facts`]: what the cluster answers that a CSR cannot say (reviews, Nodes, the API server).
//! - [`csr`]: what a CSR object says (its state, the policy's view of it).
//! - [`controller`]: all Kubernetes I/O.
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
pub mod x509;
