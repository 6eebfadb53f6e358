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

pub mod ca;
pub mod check;
pub mod client;
pub mod config;
pub mod controller;
pub mod csr;
pub mod facts;
pub mod http;
pub mod inspect;
pub mod issue;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod pod_certificates;
pub mod pods;
pub mod policy;
pub mod request;
pub mod telemetry;
pub mod trust_bundles;
