//! csr-warden side by side with kube-controller-manager's own CSR controllers
//! (`--controllers=csrapproving,csrsigning --kube-api-qps=1000 --kube-api-burst=1000`) on the
//! same real kube-apiserver + etcd (tests/support/control_plane.rs, `KUBEBUILDER_ASSETS`).
//!
//! N kubelet client CSRs from one bootstrap identity (allowed by the nodeclient
//! SubjectAccessReview, as kubeadm binds it), in two modes: burst (created while the controller
//! runs) and backlog (created before it starts, as after an outage). Rounds alternate between
//! the two controllers. For each run: CSRs per second, p50/p99 from creation to certificate,
//! API requests per issued CSR (the server's audit log, by user agent or user; lists and watches
//! aside), peak RSS, and the most connections held to the API server.
//!
//! `KUBEBUILDER_ASSETS=$(../shared/kubernetes/unpack) cargo bench --bench vs_controller_manager -- [N] [ROUNDS]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use support::control_plane::{self, ControlPlane, Guarded};
use support::*;

const CSR_WARDEN_USER: &str = "system:serviceaccount:csr-warden:csr-warden";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    CsrWarden,
    ControllerManager,
}

#[derive(Debug)]
struct Run {
    who: Who,
    backlog: bool,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    requests_per_csr: f64,
    peak_rss_mib: f64,
    connections: usize,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The pid under a guard's `sh` (the real process).
fn child_pid(sh: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Established TCP connections of `pid` to 127.0.0.1:`port`.
fn connections(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 9 && cols[2] == remote && cols[3] == "01" && inodes.contains(cols[9])
        })
        .count()
}

/// Create `names` as kubelet client CSRs from the bootstrap identity, in one request.
fn create_batch(plane: &ControlPlane, dir: &std::path::Path, names: &[String]) {
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            let pem = rcgen_csr(&format!("system:node:{name}"), &["system:nodes"], &[]);
            csr_object(
                name,
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &pem,
            )
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let file = dir.join("batch.json");
    std::fs::write(&file, list.to_string()).expect("batch");
    plane.kubectl(
        &[
            "create",
            "-f",
            &file.display().to_string(),
            "--as",
            "system:bootstrap:bench",
            "--as-group",
            "system:bootstrappers",
        ],
        None,
    );
}

/// Requests the controller made for this run's CSRs (not lists or watches), from the audit log.
fn requests(plane: &ControlPlane, who: Who, since_line: usize) -> usize {
    plane
        .audit_events()
        .into_iter()
        .skip(since_line)
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| !matches!(e["verb"].as_str(), Some("list" | "watch")))
        .filter(|e| match who {
            Who::CsrWarden => e["user"]["username"] == CSR_WARDEN_USER,
            Who::ControllerManager => e["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.starts_with("kube-controller-manager")),
        })
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .count()
}

async fn run_once(
    plane: &ControlPlane,
    client: &kube::Client,
    who: Who,
    backlog: bool,
    n: usize,
    round: usize,
    token_kubeconfig: &std::path::Path,
) -> Run {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = format!(
        "{}-{}-{round}",
        if who == Who::CsrWarden { "w" } else { "k" },
        if backlog { "backlog" } else { "burst" }
    );
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    let issued_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let created_at: Arc<Mutex<Option<Instant>>> = Default::default();
    // Our own watch, to time each certificate as the server shows it.
    let watch = {
        let issued_at = issued_at.clone();
        let prefix = prefix.clone();
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(csr)) = events.next().await {
                let name = csr.metadata.name.clone().unwrap_or_default();
                let has_cert = csr
                    .status
                    .as_ref()
                    .and_then(|s| s.certificate.as_ref())
                    .is_some();
                if has_cert && name.starts_with(&prefix) {
                    issued_at
                        .lock()
                        .expect("issued")
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let audit_before = plane.audit_events().len();
    if backlog {
        *created_at.lock().expect("created") = Some(Instant::now());
        create_batch(plane, dir.path(), &names);
    }
    let started = Instant::now();
    let (pid, _process): (u32, Box<dyn std::any::Any>) = match who {
        Who::CsrWarden => {
            std::fs::write(
                dir.path().join("policy.yaml"),
                "signerNames: [kubernetes.io/kube-apiserver-client-kubelet]\n",
            )
            .expect("policy");
            let process = ControllerProcess::start_with_kubeconfig(
                dir.path(),
                &(plane.ca_cert.clone(), plane.ca_key.clone()),
                &["--resync-interval-seconds", "3600"],
                token_kubeconfig,
            );
            (process.pid().expect("pid"), Box::new(process))
        }
        Who::ControllerManager => {
            let guard: Guarded = plane
                .controller_manager("csrapproving,csrsigning")
                .expect("kube-controller-manager in KUBEBUILDER_ASSETS");
            let sh = guard.pid();
            let mut pid = None;
            control_plane::wait_until("kube-controller-manager started", || {
                pid = child_pid(sh);
                pid.is_some()
            });
            (pid.expect("pid"), Box::new(guard))
        }
    };
    if !backlog {
        // Once it is up (its first list done): give it a second, then the burst.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Latencies count from the moment the burst starts (one create request for all).
        *created_at.lock().expect("created") = Some(Instant::now());
        create_batch(plane, dir.path(), &names);
    }
    let mut most_connections = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while issued_at.lock().expect("issued").len() < n {
        assert!(
            Instant::now() < deadline,
            "{prefix}: not all issued in 10 minutes"
        );
        most_connections = most_connections.max(connections(pid, plane.port));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    most_connections = most_connections.max(connections(pid, plane.port));
    drop(_process);
    watch.abort();
    let created = created_at.lock().expect("created").expect("created");
    let from = if backlog { started } else { created };
    let issued = issued_at.lock().expect("issued");
    let last = issued.values().max().copied().unwrap_or(from);
    let mut latencies: Vec<Duration> = issued
        .values()
        .map(|at| at.saturating_duration_since(created))
        .collect();
    latencies.sort();
    let requests = requests(plane, who, audit_before);
    Run {
        who,
        backlog,
        per_second: n as f64 / last.saturating_duration_since(from).as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        requests_per_csr: requests as f64 / n as f64,
        peak_rss_mib: peak as f64 / 1024.0,
        connections: most_connections,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(2000);
    let rounds = args.get(1).copied().unwrap_or(3);
    let assets = match control_plane::assets() {
        Ok(assets) => assets,
        Err(why) => {
            eprintln!("vs_controller_manager: SKIPPED: {why}");
            return;
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let plane = ControlPlane::start(&assets);
    // What kubeadm binds for bootstrap tokens; csr-warden as its ServiceAccount with the
    // manifests' RBAC.
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
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&plane.admin).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    let client = kube::Client::try_from(config).expect("client");

    let mut runs = Vec::new();
    for round in 0..rounds {
        for backlog in [false, true] {
            for who in [Who::ControllerManager, Who::CsrWarden] {
                let run =
                    run_once(&plane, &client, who, backlog, n, round, &token_kubeconfig).await;
                eprintln!("{run:?}");
                runs.push(run);
                // Finished CSRs of earlier runs stay: both controllers see the same history.
            }
        }
    }
    println!(
        "\n{n} kubelet client CSRs, median of {rounds} interleaved rounds\n\n| mode | controller | CSRs/s | p50 create->cert | p99 | API requests per CSR | peak RSS | connections |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for backlog in [false, true] {
        for who in [Who::ControllerManager, Who::CsrWarden] {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.who == who && r.backlog == backlog)
                .collect();
            let m = |f: &dyn Fn(&Run) -> f64| median(these.iter().map(|r| f(r)).collect());
            println!(
                "| {} | {} | {:.0} | {:.2} s | {:.2} s | {:.2} | {:.1} MiB | {:.0} |",
                if backlog { "backlog" } else { "burst" },
                if who == Who::CsrWarden {
                    "csr-warden"
                } else {
                    "kube-controller-manager"
                },
                m(&|r| r.per_second),
                m(&|r| r.p50.as_secs_f64()),
                m(&|r| r.p99.as_secs_f64()),
                m(&|r| r.requests_per_csr),
                m(&|r| r.peak_rss_mib),
                m(&|r| r.connections as f64),
            );
        }
    }
}
