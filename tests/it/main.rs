//! Every integration test, in one binary: tests/support is compiled once. One module per
//! feature, as the README's feature table reads.

#[path = "../support/mod.rs"]
mod support;

mod backlog;
mod cache;
mod ceiling;
mod check;
mod check_live;
mod client;
mod config;
mod controller;
mod events;
mod fake_rbac;
mod faults;
mod hostile;
mod issue;
mod operations;
mod pkcs11;
mod pod_certificates;
mod pod_runtime;
mod pods;
mod policy;
mod queue;
mod real_apiserver;
mod real_cluster;
mod reconcile;
mod signer_roles;
mod user;
mod work;
mod x509_parity;
