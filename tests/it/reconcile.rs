//! One reconcile at a time, in-process: the CSR controller's reconcile against the fake API
//! server, with no binary, no watch and no workers. Each row is a CSR and what two reconciles in
//! a row leave on it (the first decides, the second signs what was approved).

use std::sync::Arc;
use std::time::Duration;

use crate::support::apiserver::CONTROLLER_TOKEN;
use crate::support::*;
use csr_warden::csr::{Context, Settings, reconcile};
use csr_warden::ops::live::{Live, Sources};
use csr_warden::policy::file::load_policy;
use csr_warden::x509::ca::{CaPaths, ClusterCa};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::config::{KubeConfigOptions, Kubeconfig};

async fn context(h: &Harness) -> Context {
    let path = h.dir.path().join("policy.yaml");
    std::fs::write(&path, POLICY).expect("policy");
    let policy = load_policy(&path).expect("valid policy");
    let sources = Sources {
        policy: path,
        default_ca: CaPaths {
            cert: h.ca.0.clone(),
            key: h.ca.1.clone(),
            pkcs11: None,
        },
        cluster_ca: ClusterCa::default(),
    };
    // No leader election: this process leads.
    let live = Live::start(policy, &sources, false).expect("the CA loads");
    let kubeconfig = Kubeconfig::read_from(h.server.kubeconfig(h.dir.path(), CONTROLLER_TOKEN))
        .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let settings = Settings {
        dry_run: false,
        instance: "in-process".into(),
        concurrency: 1,
        resync_interval: Duration::from_secs(300),
        watch_timeout_seconds: 290,
    };
    Context::standalone(client, live, settings)
}

fn read(h: &Harness, name: &str) -> Arc<CertificateSigningRequest> {
    let object = h.server.csr(name).expect("the CSR exists");
    Arc::new(serde_json::from_value(object).expect("a CSR"))
}

/// (name, token, subject, conditions after one reconcile, after two, certificate after two)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    bool,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_decides_and_the_next_signs_what_was_approved() {
    let h = harness().await;
    let rows: [Row; 3] = [
        (
            "jane",
            "jane-token",
            "/CN=jane/O=developers",
            &["Approved"],
            &["Approved"],
            true,
        ),
        (
            "agent-smith",
            "smith-token",
            "/CN=agent-smith/O=system:masters",
            &["Denied"],
            &["Denied"],
            false,
        ),
        ("bob", "bob-token", "/CN=bob/O=ops", &[], &[], false),
    ];
    for (name, token, subject, ..) in &rows {
        h.create_client_csr(token, name, subject);
    }
    let ctx = context(&h).await;
    for (name, _, _, after_one, after_two, certificate) in rows {
        reconcile(read(&h, name), &ctx).await.expect("reconciled");
        let once = h.server.csr(name).expect("csr");
        assert_eq!(
            condition_types(&once),
            after_one,
            "{name} after one reconcile"
        );
        assert!(
            once["status"]["certificate"].is_null(),
            "{name}: a decision writes no certificate"
        );
        reconcile(read(&h, name), &ctx).await.expect("reconciled");
        let twice = h.server.csr(name).expect("csr");
        assert_eq!(condition_types(&twice), after_two, "{name} after two");
        assert_eq!(
            twice["status"]["certificate"].is_string(),
            certificate,
            "{name}: a certificate after the second reconcile"
        );
    }
    let denied = h.server.csr("agent-smith").expect("csr");
    assert_eq!(
        condition(&denied, "Denied").expect("Denied")["reason"],
        "ForbiddenGroup"
    );
}
