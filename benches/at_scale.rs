//! csr-warden and kube-controller-manager in a cluster that already holds many CSRs, on the real
//! kube-apiserver + etcd (tests/support/control_plane.rs, `KUBEBUILDER_ASSETS`): what a restart
//! costs, and what csr-warden's periodic resync costs, at the 50,000 CSRs.
//!
//! The cluster: N (50,000) issued kubelet client CSRs, FOREIGN (10,000) pending CSRs of a signer
//! neither controller owns, and before each start a backlog of BACKLOG (500) new kubelet client
//! CSRs from the bootstrap identity. Each round starts kube-controller-manager
//! (`--controllers=csrapproving,csrsigning`) and then csr-warden into that cluster. For each:
//! - the restart: seconds until every backlog CSR is issued, csr-warden's seconds until its
//!   watch synced, peak RSS, CPU (the controller's, kube-apiserver's + etcd's), the lists and
//!   the other requests it made, the most connections held;
//! - settled, SETTLE seconds after the backlog is issued: RSS, and the CPU of the controller and
//!   of the server over a further WINDOW seconds. csr-warden runs with a RESYNC-second resync,
//!   so its window holds WINDOW / RESYNC resyncs (one paged list per signer, field selector
//!   `spec.signerName`); kube-controller-manager's informers resync in memory.
//!
//! Every backlog stays in the cluster issued, so N grows by BACKLOG a run.
//!
//! `KUBEBUILDER_ASSETS=$(../shared/kubernetes/unpack) cargo bench --bench at_scale -- [N] [ROUNDS]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use support::bench::*;
use support::control_plane::ControlPlane;
use support::procfs::*;
use support::*;

const FOREIGN_SIGNER: &str = "example.com/not-ours";
const FOREIGN: usize = 10_000;
const BACKLOG: usize = 500;
/// Seconds between csr-warden's resyncs in this bench (300 by default).
const RESYNC: u64 = 10;
const SETTLE: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(30);
/// Creates in flight while filling the cluster.
const CREATING: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    ControllerManager,
    CsrWarden,
}

impl Who {
    fn word(self) -> &'static str {
        match self {
            Who::CsrWarden => "csr-warden",
            Who::ControllerManager => "kcm",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Who::CsrWarden => "csr-warden",
            Who::ControllerManager => "kube-controller-manager",
        }
    }

    fn made(self, event: &Value) -> bool {
        match self {
            Who::CsrWarden => by_csr_warden(event),
            Who::ControllerManager => by_controller_manager(event),
        }
    }
}

#[derive(Debug)]
struct Run {
    who: Who,
    /// CSRs in the cluster when it started (the backlog included).
    csrs: usize,
    backlog_issued_s: f64,
    synced_s: Option<f64>,
    peak_rss_mib: f64,
    restart_cpu_ms: f64,
    restart_server_cpu_ms: f64,
    restart_lists: usize,
    restart_other_requests: usize,
    connections: usize,
    settled_rss_mib: f64,
    window_cpu_ms: f64,
    window_server_cpu_ms: f64,
    window_lists: usize,
    /// Wall time of each resync in the window (its first page asked to its last answered).
    resync_s: Vec<f64>,
}

/// A kubelet client CSR object for node `name`, all with the one key (the cluster is filled
/// faster, and neither controller looks at whether two CSRs share a key).
fn kubelet_csr(name: &str, pem: &str) -> CertificateSigningRequest {
    serde_json::from_value(csr_object(
        name,
        KUBELET_CLIENT_SIGNER,
        &["digital signature", "client auth"],
        pem,
    ))
    .expect("csr")
}

async fn create_all(api: &Api<CertificateSigningRequest>, csrs: Vec<CertificateSigningRequest>) {
    futures::stream::iter(csrs)
        .map(|csr| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &csr)
                    .await
                    .expect("create CSR")
            }
        })
        .buffer_unordered(CREATING)
        .for_each(|_| async {})
        .await;
}

/// Counts the issued CSRs whose names start with each prefix asked about, as the server shows
/// them.
struct IssuedCount {
    issued: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl IssuedCount {
    fn start(client: &kube::Client) -> IssuedCount {
        let issued: Arc<Mutex<HashSet<String>>> = Default::default();
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        let task = tokio::spawn({
            let issued = issued.clone();
            async move {
                let mut events = watcher(api, watcher::Config::default())
                    .applied_objects()
                    .boxed();
                while let Some(Ok(csr)) = events.next().await {
                    if csr.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
                        let name = csr.metadata.name.unwrap_or_default();
                        issued.lock().expect("issued").insert(name);
                    }
                }
            }
        });
        IssuedCount { issued, task }
    }

    fn with_prefix(&self, prefix: &str) -> usize {
        self.issued
            .lock()
            .expect("issued")
            .iter()
            .filter(|name| name.starts_with(prefix))
            .count()
    }

    async fn wait_for(&self, prefix: &str, n: usize, minutes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60 * minutes);
        while self.with_prefix(prefix) < n {
            assert!(
                Instant::now() < deadline,
                "{prefix}: {} of {n} issued after {minutes} minutes",
                self.with_prefix(prefix)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for IssuedCount {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (lists, other requests) `who` made among `events`, each kind counted on stderr.
fn requests(events: &[Value], who: Who) -> (usize, usize) {
    let by_kind = requests_by_kind(events, |event| who.made(event));
    eprintln!("{who:?} requests: {by_kind:?}");
    (
        count_verbs(&by_kind, &["list"], true),
        count_verbs(&by_kind, &["list", "watch"], false),
    )
}

/// csr-warden's resyncs among `events`: the wall time of each, from its first page asked to its
/// last answered (a resync's pages follow each other; the next resync is RESYNC s later).
fn resync_durations(events: &[Value]) -> Vec<f64> {
    let at = |event: &Value, field: &str| {
        event[field]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    };
    let pages: Vec<(k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp)> = events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete" && Who::CsrWarden.made(e))
        .filter(|e| {
            e["verb"] == "list" && e["objectRef"]["resource"] == "certificatesigningrequests"
        })
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|uri| uri.contains("fieldSelector"))
        })
        .filter_map(|e| Some((at(e, "requestReceivedTimestamp")?, at(e, "stageTimestamp")?)))
        .collect();
    let mut resyncs: Vec<(k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp)> = Vec::new();
    for (asked, answered) in pages {
        match resyncs.last_mut() {
            Some((_, end)) if asked.duration_since(*end).as_secs_f64() < RESYNC as f64 / 2.0 => {
                *end = answered
            }
            _ => resyncs.push((asked, answered)),
        }
    }
    resyncs
        .iter()
        .map(|(start, end)| end.duration_since(*start).as_secs_f64())
        .collect()
}

struct Bench<'a> {
    plane: &'a ControlPlane,
    bootstrap: &'a Api<CertificateSigningRequest>,
    issued: &'a IssuedCount,
    token_kubeconfig: &'a std::path::Path,
    pem: &'a str,
}

async fn run_once(bench: &Bench<'_>, who: Who, round: usize, csrs: usize) -> Run {
    let plane = bench.plane;
    let prefix = format!("{}-{round}-", who.word());
    let backlog: Vec<_> = (0..BACKLOG)
        .map(|i| kubelet_csr(&format!("{prefix}{i:04}"), bench.pem))
        .collect();
    create_all(bench.bootstrap, backlog).await;
    let dir = tempfile::tempdir().expect("dir");
    let audit_before = plane.audit_len();
    let server_before = server_ticks();
    let started = Instant::now();
    let (pid, process): (u32, Box<dyn std::any::Any>) = match who {
        Who::CsrWarden => {
            let process = start_csr_warden(plane, bench.token_kubeconfig, dir.path(), RESYNC);
            (process.pid().expect("pid"), Box::new(process))
        }
        Who::ControllerManager => {
            let (pid, guard) = start_controller_manager(plane, "csrapproving,csrsigning", &[]);
            (pid, Box::new(guard))
        }
    };
    let sampling = Arc::new(AtomicBool::new(true));
    let most_connections = Arc::new(AtomicUsize::new(0));
    let sampler = std::thread::spawn({
        let (sampling, most) = (sampling.clone(), most_connections.clone());
        let port = plane.port;
        move || {
            while sampling.load(Ordering::Relaxed) {
                most.fetch_max(connections(pid, port), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let synced = async {
        let process = process.downcast_ref::<ControllerProcess>()?;
        process.wait_synced().await;
        Some(started.elapsed().as_secs_f64())
    };
    let (synced_s, ()) = tokio::join!(synced, bench.issued.wait_for(&prefix, BACKLOG, 10));
    let backlog_issued_s = started.elapsed().as_secs_f64();
    let peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    let restart_cpu_ms = process_ticks(pid) as f64 * MS_PER_TICK;
    let restart_server_cpu_ms = (server_ticks() - server_before) as f64 * MS_PER_TICK;
    let restart_events = plane.audit_events_from(audit_before);
    let (restart_lists, restart_other_requests) = requests(&restart_events, who);

    tokio::time::sleep(SETTLE).await;
    let settled_rss = status_kib(pid, "VmRSS:").unwrap_or(0);
    let audit_window = plane.audit_len();
    let (cpu_before, server_before) = (process_ticks(pid), server_ticks());
    tokio::time::sleep(WINDOW).await;
    let window_cpu_ms = (process_ticks(pid) - cpu_before) as f64 * MS_PER_TICK;
    let window_server_cpu_ms = (server_ticks() - server_before) as f64 * MS_PER_TICK;
    let window_events = plane.audit_events_from(audit_window);
    let (window_lists, _) = requests(&window_events, who);
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    drop(process);
    Run {
        who,
        csrs,
        backlog_issued_s,
        synced_s,
        peak_rss_mib: peak as f64 / 1024.0,
        restart_cpu_ms,
        restart_server_cpu_ms,
        restart_lists,
        restart_other_requests,
        connections: most_connections.load(Ordering::Relaxed),
        settled_rss_mib: settled_rss as f64 / 1024.0,
        window_cpu_ms,
        window_server_cpu_ms,
        window_lists,
        resync_s: resync_durations(&window_events),
    }
}

/// What one pass over `signer`'s CSRs costs, listed four ways, 500 a page: consistently
/// (resourceVersion unset; served from etcd unless the server can serve consistent lists from
/// its watch cache, which needs etcd 3.5.13 or later) or from the watch cache
/// (resourceVersion=0), whole objects or metadata only (csr-warden's resync lists consistently,
/// metadata only). The median of three passes each: (label, items, pages, seconds, kube-apiserver + etcd CPU ms, this
/// process's CPU ms).
async fn list_costs(
    client: &kube::Client,
    signer: &str,
) -> Vec<(&'static str, usize, usize, f64, f64, f64)> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let ways = [
        ("consistent, whole objects", false, false),
        (
            "consistent, metadata only (csr-warden's resync)",
            false,
            true,
        ),
        (
            "resourceVersion=0 (the watch cache), whole objects",
            true,
            false,
        ),
        ("resourceVersion=0, metadata only", true, true),
    ];
    let mut costs = Vec::new();
    for (label, from_cache, metadata_only) in ways {
        let mut passes = Vec::new();
        for _ in 0..3 {
            let mut params = kube::api::ListParams::default()
                .fields(&format!("spec.signerName={signer}"))
                .limit(500);
            if from_cache {
                params = params.match_any();
            }
            let me = std::process::id();
            let (server_before, me_before) = (server_ticks(), process_ticks(me));
            let started = Instant::now();
            let (mut pages, mut items) = (0, 0);
            loop {
                let (count, next) = if metadata_only {
                    let list = api.list_metadata(&params).await.expect("list");
                    (list.items.len(), list.metadata.continue_)
                } else {
                    let list = api.list(&params).await.expect("list");
                    (list.items.len(), list.metadata.continue_)
                };
                pages += 1;
                items += count;
                match next.filter(|token| !token.is_empty()) {
                    Some(token) => params.continue_token = Some(token),
                    None => break,
                }
            }
            passes.push((
                items,
                pages,
                started.elapsed().as_secs_f64(),
                (server_ticks() - server_before) as f64 * MS_PER_TICK,
                (process_ticks(me) - me_before) as f64 * MS_PER_TICK,
            ));
        }
        let (items, pages) = (passes[0].0, passes[0].1);
        let m =
            |f: fn(&(usize, usize, f64, f64, f64)) -> f64| median(passes.iter().map(f).collect());
        costs.push((label, items, pages, m(|p| p.2), m(|p| p.3), m(|p| p.4)));
    }
    costs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (n, rounds) = count_and_rounds(50_000, 2);
    let Some(assets) = assets_or_skip("at_scale") else {
        return;
    };
    let cluster = BenchCluster::start(&assets).await;
    let (plane, token_kubeconfig, client) =
        (&cluster.plane, &cluster.token_kubeconfig, &cluster.admin);
    let bootstrap: Api<CertificateSigningRequest> = Api::all(cluster.bootstrap.clone());
    let pem = rcgen_csr("system:node:bench", &["system:nodes"], &[]);
    let issued = IssuedCount::start(client);

    // The cluster: N issued kubelet client CSRs (issued by csr-warden, not timed) and FOREIGN
    // pending CSRs of a signer nobody here owns.
    let filling = Instant::now();
    {
        let fill_dir = tempfile::tempdir().expect("dir");
        let filler = start_csr_warden(plane, token_kubeconfig, fill_dir.path(), 3600);
        filler.wait_synced().await;
        let finished: Vec<_> = (0..n)
            .map(|i| kubelet_csr(&format!("issued-{i:06}"), &pem))
            .collect();
        create_all(&bootstrap, finished).await;
        issued.wait_for("issued-", n, 20).await;
        let _ = filler.terminate().await;
    }
    let foreign: Vec<CertificateSigningRequest> = (0..FOREIGN)
        .map(|i| {
            serde_json::from_value(csr_object(
                &format!("foreign-{i:05}"),
                FOREIGN_SIGNER,
                &["client auth"],
                &pem,
            ))
            .expect("csr")
        })
        .collect();
    create_all(&Api::all(client.clone()), foreign).await;
    eprintln!(
        "filled: {n} issued + {FOREIGN} foreign CSRs in {:.0} s",
        filling.elapsed().as_secs_f64()
    );

    let bench = Bench {
        plane,
        bootstrap: &bootstrap,
        issued: &issued,
        token_kubeconfig,
        pem: &pem,
    };
    let mut runs = Vec::new();
    let mut csrs = n + FOREIGN;
    for round in 0..rounds {
        for who in [Who::ControllerManager, Who::CsrWarden] {
            csrs += BACKLOG;
            let run = run_once(&bench, who, round, csrs).await;
            eprintln!("{run:?}");
            runs.push(run);
        }
    }
    println!(
        "\n{n} issued kubelet client CSRs + {FOREIGN} of another signer + a backlog of {BACKLOG} (every backlog stays, issued), median of {rounds} interleaved rounds; settled: {}s after the backlog, over {}s (csr-warden resyncing every {RESYNC}s)\n\n| controller | CSRs at start | backlog issued after | watch synced after | peak RSS | CPU to the backlog: controller | kube-apiserver + etcd | lists | other requests | connections | settled RSS | settled CPU: controller | kube-apiserver + etcd | lists | one resync's wall time |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        SETTLE.as_secs(),
        WINDOW.as_secs()
    );
    let costs = list_costs(client, KUBELET_CLIENT_SIGNER).await;
    for who in [Who::ControllerManager, Who::CsrWarden] {
        let these: Vec<&Run> = runs.iter().filter(|r| r.who == who).collect();
        let m = |f: &dyn Fn(&Run) -> f64| median(these.iter().map(|r| f(r)).collect());
        let synced = m(&|r| r.synced_s.unwrap_or(f64::NAN));
        let resync = median(these.iter().flat_map(|r| r.resync_s.clone()).collect());
        println!(
            "| {} | {:.0} | {:.1} s | {} | {:.0} MiB | {:.0} ms | {:.0} ms | {:.0} | {:.0} | {:.0} | {:.0} MiB | {:.0} ms | {:.0} ms | {:.0} | {} |",
            who.label(),
            m(&|r| r.csrs as f64),
            m(&|r| r.backlog_issued_s),
            if synced.is_nan() {
                "-".to_owned()
            } else {
                format!("{synced:.1} s")
            },
            m(&|r| r.peak_rss_mib),
            m(&|r| r.restart_cpu_ms),
            m(&|r| r.restart_server_cpu_ms),
            m(&|r| r.restart_lists as f64),
            m(&|r| r.restart_other_requests as f64),
            m(&|r| r.connections as f64),
            m(&|r| r.settled_rss_mib),
            m(&|r| r.window_cpu_ms),
            m(&|r| r.window_server_cpu_ms),
            m(&|r| r.window_lists as f64),
            if resync.is_nan() {
                "-".to_owned()
            } else {
                format!("{resync:.2} s")
            },
        );
    }
    println!(
        "\nOne pass over {KUBELET_CLIENT_SIGNER}'s CSRs (field selector spec.signerName), 500 a page, median of 3:\n\n| listed | CSRs | pages | wall time | kube-apiserver + etcd CPU | the lister's CPU |\n| --- | --- | --- | --- | --- | --- |"
    );
    for (label, items, pages, seconds, server_ms, own_ms) in costs {
        println!(
            "| {label} | {items} | {pages} | {seconds:.2} s | {server_ms:.0} ms | {own_ms:.0} ms |"
        );
    }
}
