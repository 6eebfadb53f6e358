//! What the benches beside kube-controller-manager share: the real control plane set up as
//! kubeadm binds bootstrap tokens, the clients they drive it with, kube-controller-manager
//! started and found, and the API requests each controller made, from the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::apiserver::CONTROLLER_USER;
use super::control_plane::{self, ControlPlane, Guarded};
use super::procfs::child_pid;
use super::{ControllerProcess, KUBELET_CLIENT_SIGNER};

/// A bench's two numbers from its command line (`-- [N] [ROUNDS]`), else the defaults.
pub fn count_and_rounds(count: usize, rounds: usize) -> (usize, usize) {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    (
        numbers.first().copied().unwrap_or(count),
        numbers.get(1).copied().unwrap_or(rounds),
    )
}

/// `KUBEBUILDER_ASSETS`, or None after saying why `bench` is skipped.
pub fn assets_or_skip(bench: &str) -> Option<PathBuf> {
    control_plane::assets()
        .inspect_err(|why| eprintln!("{bench}: SKIPPED: {why}"))
        .ok()
}

/// A control plane for a bench, and who acts on it.
pub struct BenchCluster {
    pub plane: ControlPlane,
    /// csr-warden's kubeconfig: its ServiceAccount's token, with the manifests' RBAC.
    pub token_kubeconfig: PathBuf,
    /// The admin (system:masters, by client certificate).
    pub admin: kube::Client,
    /// The admin impersonating a bootstrap token's identity (`system:bootstrap:bench` in
    /// `system:bootstrappers`), as kubectl's `--as` does: the kubelet client CSRs' requester.
    pub bootstrap: kube::Client,
    _dir: tempfile::TempDir,
}

impl BenchCluster {
    /// The control plane from `assets`, with the nodeclient binding kubeadm makes for
    /// bootstrap tokens and csr-warden's Namespace, ServiceAccount and RBAC.
    pub async fn start(assets: &Path) -> BenchCluster {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let plane = ControlPlane::start(assets);
        plane.kubectl(
            &[
                "create",
                "clusterrolebinding",
                "bench-nodeclient",
                "--clusterrole=system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                "--group=system:bootstrappers",
            ],
            None,
        );
        let dir = tempfile::tempdir().expect("dir");
        let token_kubeconfig = plane.as_csr_warden(dir.path());
        let config = config_from(&plane.admin).await;
        let admin = kube::Client::try_from(config.clone()).expect("client");
        let mut bootstrap_config = config;
        bootstrap_config.auth_info.impersonate = Some("system:bootstrap:bench".into());
        bootstrap_config.auth_info.impersonate_groups = Some(vec!["system:bootstrappers".into()]);
        let bootstrap = kube::Client::try_from(bootstrap_config).expect("bootstrap client");
        BenchCluster {
            plane,
            token_kubeconfig,
            admin,
            bootstrap,
            _dir: dir,
        }
    }
}

/// The client configuration a kubeconfig file gives.
pub async fn config_from(kubeconfig: &Path) -> kube::Config {
    kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config")
}

/// csr-warden as the benches run it: deciding and signing kubelet client CSRs only, with the
/// cluster CA, as its ServiceAccount (`token_kubeconfig`), resyncing every `resync_seconds`,
/// logging at the manifests' level; its policy file and its log (`csr-warden.log`) in `dir`.
pub fn start_csr_warden(
    plane: &ControlPlane,
    token_kubeconfig: &Path,
    dir: &Path,
    resync_seconds: u64,
) -> ControllerProcess {
    std::fs::write(
        dir.join("policy.yaml"),
        format!("signerNames: [{KUBELET_CLIENT_SIGNER}]\n"),
    )
    .expect("policy");
    ControllerProcess::start_as_deployed(
        dir,
        &(plane.ca_cert.clone(), plane.ca_key.clone()),
        &["--resync-interval-seconds", &resync_seconds.to_string()],
        token_kubeconfig,
        &dir.join("csr-warden.log"),
    )
}

/// kube-controller-manager with `controllers` and `extra` flags, and the pid of the process
/// itself (its guard is a shell).
pub fn start_controller_manager(
    plane: &ControlPlane,
    controllers: &str,
    extra: &[&str],
) -> (u32, Guarded) {
    let guard = plane
        .controller_manager_with(controllers, extra)
        .expect("kube-controller-manager in KUBEBUILDER_ASSETS");
    let sh = guard.pid();
    let mut pid = None;
    control_plane::wait_until("kube-controller-manager started", || {
        pid = child_pid(sh);
        pid.is_some()
    });
    (pid.expect("pid"), guard)
}

/// An audit event of a request csr-warden made (with its ServiceAccount's token).
pub fn by_csr_warden(event: &Value) -> bool {
    event["user"]["username"] == CONTROLLER_USER
}

/// An audit event of a request kube-controller-manager made (any of its credentials).
pub fn by_controller_manager(event: &Value) -> bool {
    event["userAgent"]
        .as_str()
        .is_some_and(|agent| agent.starts_with("kube-controller-manager"))
}

/// The completed requests among `events` that `made` picks, Leases (leader election) aside,
/// counted by kind: "verb resource[/subresource] code".
pub fn requests_by_kind(
    events: &[Value],
    made: impl Fn(&Value) -> bool,
) -> BTreeMap<String, usize> {
    let mut by_kind = BTreeMap::new();
    for event in events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete" && made(e))
        .filter(|e| e["objectRef"]["resource"] != "leases")
    {
        let kind = format!(
            "{} {}{} {}",
            event["verb"].as_str().unwrap_or("?"),
            event["objectRef"]["resource"].as_str().unwrap_or("?"),
            event["objectRef"]["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            event["responseStatus"]["code"]
        );
        *by_kind.entry(kind).or_default() += 1;
    }
    by_kind
}

/// How many of `by_kind`'s requests have one of `verbs` (`true`) or none of them (`false`).
pub fn count_verbs(by_kind: &BTreeMap<String, usize>, verbs: &[&str], with: bool) -> usize {
    by_kind
        .iter()
        .filter(|(kind, _)| {
            let verb = kind.split(' ').next().unwrap_or_default();
            verbs.contains(&verb) == with
        })
        .map(|(_, count)| count)
        .sum()
}

/// The middle value (the upper of the two middle ones for an even count); NaN for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
