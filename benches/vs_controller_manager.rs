//! csr-warden side by side with kube-controller-manager's own CSR controllers
//! (`--controllers=csrapproving,csrsigning --kube-api-qps=1000 --kube-api-burst=1000`) on the
//! same real kube-apiserver + etcd (tests/support/control_plane.rs, `KUBEBUILDER_ASSETS`).
//!
//! N kubelet client CSRs from one bootstrap identity (allowed by the nodeclient
//! SubjectAccessReview, as kubeadm binds it), in three modes: burst (created by one kubectl, as
//! fast as it can, while the controller runs), backlog (created before it starts, as after an
//! outage) and trickle (600 CSRs at a steady 20 a second, each timed from its own creation: what
//! a cluster's steady state asks of a controller). Rounds alternate between the controllers,
//! and every run starts from a cluster with no CSRs (the last run's are deleted). `kcm-sa` adds
//! kube-controller-manager with ServiceAccount credentials, as kubeadm runs it. For each run:
//! CSRs per second, p50/p99 from creation to certificate, API requests per issued CSR (the
//! server's audit log, by user agent or user; lists and watches aside), peak RSS, the most
//! connections held to the API server, CPU per CSR of the controller, of kube-apiserver + etcd
//! and of this bench, how busy the machine was, and how fast the CSRs were created. `baseline`
//! first times kubectl creating N CSRs with no controller running (the most a burst can show);
//! `floor` adds a yardstick: a controller that makes only the two writes every issued CSR
//! needs (its approval, then a fixed certificate) and nothing else, the most any controller
//! could reach on this machine. `VS_PROFILE_DIR=DIR` takes kube-apiserver's pprof profile
//! (and, with `perf` installed, the controller's) during each run.
//!
//! `KUBEBUILDER_ASSETS=$(../shared/kubernetes/unpack) cargo bench --bench vs_controller_manager -- [N] [ROUNDS] [baseline] [burst|backlog|trickle] [csr-warden|kcm|kcm-sa|floor]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use support::bench::*;
use support::control_plane::ControlPlane;
use support::procfs::*;
use support::*;

/// A trickle: this many CSRs, one every 1/TRICKLE_PER_SECOND s.
const TRICKLE_CSRS: usize = 600;
const TRICKLE_PER_SECOND: u32 = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Burst,
    Backlog,
    Trickle,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Burst => "burst",
            Mode::Backlog => "backlog",
            Mode::Trickle => "trickle",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    CsrWarden,
    ControllerManager,
    /// kube-controller-manager as kubeadm runs it: each controller with its own ServiceAccount's
    /// token (`--use-service-account-credentials`), not the admin's client certificate, which
    /// the server verifies on every request. Only when named (`kcm-sa`).
    ControllerManagerSa,
    /// The floor: a controller that makes only the two writes every issued CSR needs, and
    /// nothing else (see [`floor_controller`]). What any controller could reach on this
    /// machine. Only when named (`floor`).
    Floor,
}

impl Who {
    fn word(self) -> &'static str {
        match self {
            Who::CsrWarden => "csr-warden",
            Who::ControllerManager => "kcm",
            Who::ControllerManagerSa => "kcm-sa",
            Who::Floor => "floor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Who::CsrWarden => "csr-warden",
            Who::ControllerManager => "kube-controller-manager",
            Who::ControllerManagerSa => "kube-controller-manager (ServiceAccount credentials)",
            Who::Floor => "floor (the two writes only)",
        }
    }
}

#[derive(Debug)]
struct Run {
    who: Who,
    mode: Mode,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    requests_per_csr: f64,
    peak_rss_mib: f64,
    connections: usize,
    /// The controller's own CPU (user + system) per issued CSR.
    cpu_ms_per_csr: f64,
    /// How busy the machine's cores were over the run (the API server, etcd, the controller and
    /// this bench together): near 100 % means the run was bound by CPU, not by waiting.
    machine_busy_percent: f64,
    /// kube-apiserver's and etcd's CPU per issued CSR over the same span.
    server_cpu_ms_per_csr: f64,
    /// How many CSRs a second kubectl created (in a burst, while the controller worked).
    created_per_second: f64,
    /// This bench's own CPU per CSR (its watch; in a burst, the create's kubectl is not in it).
    bench_cpu_ms_per_csr: f64,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Create `names` as kubelet client CSRs from the bootstrap identity, in one request.
/// A kubelet's client CSR for node `name`, as kubelet TLS bootstrap sends it.
fn kubelet_client_csr(name: &str) -> Value {
    let pem = rcgen_csr(&format!("system:node:{name}"), &["system:nodes"], &[]);
    csr_object(
        name,
        KUBELET_CLIENT_SIGNER,
        &["digital signature", "client auth"],
        &pem,
    )
}

fn create_batch(plane: &ControlPlane, dir: &std::path::Path, names: &[String]) {
    let items: Vec<Value> = names.iter().map(|name| kubelet_client_csr(name)).collect();
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

/// Create `csrs` as the bootstrap identity, TRICKLE_PER_SECOND a second, noting when each went.
async fn create_trickle(
    bootstrap: &kube::Client,
    csrs: Vec<CertificateSigningRequest>,
    created_each: &Arc<Mutex<HashMap<String, Instant>>>,
) {
    let api: Api<CertificateSigningRequest> = Api::all(bootstrap.clone());
    let mut every = tokio::time::interval(Duration::from_secs(1) / TRICKLE_PER_SECOND);
    let mut creates = Vec::new();
    for csr in csrs {
        every.tick().await;
        let (api, created_each) = (api.clone(), created_each.clone());
        // Each on its own task: a slow answer does not hold up the next.
        creates.push(tokio::spawn(async move {
            let name = csr.metadata.name.clone().unwrap_or_default();
            created_each
                .lock()
                .expect("created")
                .insert(name, Instant::now());
            api.create(&PostParams::default(), &csr)
                .await
                .expect("create as the bootstrap identity");
        }));
    }
    for create in creates {
        create.await.expect("create task");
    }
}

/// Delete every CSR (one deletecollection) and wait until none is left.
async fn delete_every_csr(client: &kube::Client) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    api.delete_collection(&Default::default(), &Default::default())
        .await
        .expect("delete every CSR");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .expect("list CSRs")
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "CSRs still there after 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This bench, re-executed with these set, is the floor controller.
const FLOOR_KUBECONFIG: &str = "VS_FLOOR_KUBECONFIG";
const FLOOR_CERTIFICATE: &str = "VS_FLOOR_CERTIFICATE";
/// CSRs the floor works at once: csr-warden's default concurrency.
const FLOOR_CONCURRENCY: usize = 8;

/// The floor controller as a process of its own (this bench, re-executed), so that its CPU,
/// memory and connections are measured as a controller's are; killed when dropped.
struct FloorProcess(std::process::Child);

impl FloorProcess {
    fn start(kubeconfig: &std::path::Path, certificate: &std::path::Path) -> FloorProcess {
        let child = std::process::Command::new(std::env::current_exe().expect("this bench"))
            .env(FLOOR_KUBECONFIG, kubeconfig)
            .env(FLOOR_CERTIFICATE, certificate)
            .spawn()
            .expect("the floor controller");
        FloorProcess(child)
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What any controller could reach here: with csr-warden's client stack (kube-client, rustls,
/// HTTP/1.1), its credentials and its concurrency, each new CSR gets its approval and then one
/// fixed certificate (the server checks that status.certificate is PEM certificates, not whose
/// key they hold), and nothing else: no decoding, policy, review, signature, log line or Event.
/// A bench's yardstick only: it would approve anything.
async fn floor_controller(kubeconfig: std::path::PathBuf, certificate: Vec<u8>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = config_from(&kubeconfig).await;
    let api: Api<CertificateSigningRequest> =
        Api::all(kube::Client::try_from(config).expect("client"));
    let started: Arc<Mutex<std::collections::HashSet<String>>> = Default::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(FLOOR_CONCURRENCY));
    let mut events = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    while let Some(Ok(csr)) = events.next().await {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let done = csr.status.as_ref().is_some_and(|s| s.certificate.is_some());
        if done || !started.lock().expect("started").insert(name.clone()) {
            continue;
        }
        let slot = slots.clone().acquire_owned().await.expect("slots");
        let (api, certificate) = (api.clone(), certificate.clone());
        tokio::spawn(async move {
            let _slot = slot;
            floor_issue(&api, csr, certificate).await;
        });
    }
}

/// Approve `csr`, then write `certificate` into its status; on a conflict, read it afresh.
async fn floor_issue(
    api: &Api<CertificateSigningRequest>,
    mut csr: CertificateSigningRequest,
    certificate: Vec<u8>,
) {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition;
    let name = csr.metadata.name.clone().unwrap_or_default();
    let pp = PostParams::default();
    for _attempt in 0..5 {
        // As csr-warden sends them: the server keeps its managedFields either way.
        csr.metadata.managed_fields = None;
        let status = csr.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == "Approved") {
            conditions.push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("Floor".into()),
                ..Default::default()
            });
            match api.replace_subresource("approval", &name, &pp, &csr).await {
                Ok(approved) => csr = approved,
                Err(_) => {
                    csr = api
                        .get(&name)
                        .await
                        .expect("floor: read after a failed approval");
                    continue;
                }
            }
        }
        csr.status.get_or_insert_with(Default::default).certificate =
            Some(k8s_openapi::ByteString(certificate.clone()));
        match api.replace_status(&name, &pp, &csr).await {
            Ok(_) => return,
            Err(_) => {
                csr = api
                    .get(&name)
                    .await
                    .expect("floor: read after a failed status")
            }
        }
    }
    panic!("floor: {name} not issued in 5 attempts");
}

/// Requests the controller made for this run's CSRs (not lists or watches), from the audit log.
fn requests(plane: &ControlPlane, who: Who, since_line: usize) -> usize {
    let made = |event: &Value| match who {
        Who::CsrWarden | Who::Floor => by_csr_warden(event),
        Who::ControllerManager | Who::ControllerManagerSa => by_controller_manager(event),
    };
    let by_kind = requests_by_kind(&plane.audit_events_from(since_line), made);
    eprintln!("{who:?} requests: {by_kind:?}");
    count_verbs(&by_kind, &["list", "watch"], false)
}

/// What every run shares: the control plane, the admin's client, the bootstrap identity's (for
/// the trickle's creates) and csr-warden's kubeconfig.
struct Bench<'a> {
    plane: &'a ControlPlane,
    client: &'a kube::Client,
    bootstrap: &'a kube::Client,
    token_kubeconfig: &'a std::path::Path,
}

async fn run_once(bench: &Bench<'_>, who: Who, mode: Mode, n: usize, round: usize) -> Run {
    let Bench {
        plane,
        client,
        bootstrap,
        token_kubeconfig,
    } = *bench;
    let dir = tempfile::tempdir().expect("dir");
    let prefix = format!("{}-{}-{round}", who.word(), mode.word());
    let backlog = mode == Mode::Backlog;
    let n = if mode == Mode::Trickle {
        TRICKLE_CSRS
    } else {
        n
    };
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
    let issued_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let created_at: Arc<Mutex<Option<Instant>>> = Default::default();
    // A trickle times each CSR from its own creation.
    let created_each: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
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
    let audit_before = plane.audit_len();
    if backlog {
        *created_at.lock().expect("created") = Some(Instant::now());
        create_batch(plane, dir.path(), &names);
    }
    let mut created_per_second = n as f64
        / created_at
            .lock()
            .expect("created")
            .map_or(f64::NAN, |at| at.elapsed().as_secs_f64());
    let started = Instant::now();
    let (pid, _process): (u32, Box<dyn std::any::Any>) = match who {
        Who::CsrWarden => {
            let process = start_csr_warden(plane, token_kubeconfig, dir.path(), 3600);
            (process.pid().expect("pid"), Box::new(process))
        }
        Who::ControllerManager | Who::ControllerManagerSa => {
            let extra: &[&str] = if who == Who::ControllerManagerSa {
                &["--use-service-account-credentials=true"]
            } else {
                &[]
            };
            let (pid, guard) = start_controller_manager(plane, "csrapproving,csrsigning", extra);
            (pid, Box::new(guard))
        }
        Who::Floor => {
            let floor = FloorProcess::start(token_kubeconfig, &plane.ca_cert);
            (floor.0.id(), Box::new(floor))
        }
    };
    // Sampled on a thread of its own: the burst's create blocks this task for its whole length.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let port = plane.port;
        std::thread::spawn(move || {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(connections(pid, port));
                std::thread::sleep(Duration::from_millis(100));
            }
            most.max(connections(pid, port))
        })
    };
    let mut machine_before = machine_jiffies();
    let mut server_before = server_ticks();
    let mut bench_before = process_ticks(std::process::id());
    // VS_PROFILE_DIR: also take kube-apiserver's CPU profile (8 s, from /debug/pprof) while the
    // controller works (in a burst, from the first create), to see where the server's time goes
    // (`go tool pprof -top FILE`).
    let start_profiling = || {
        std::env::var_os("VS_PROFILE_DIR").map(|dir| {
            let file = std::path::PathBuf::from(dir).join(format!("{prefix}.pprof"));
            let admin = plane.admin.clone();
            // And the controller's own, where `perf` is installed (`perf report -i FILE`). DWARF
            // call graphs: a Rust release build keeps no frame pointers, so `-g` stacks stop at
            // the first frame (the unwind tables are there without debug info).
            let _ = std::process::Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-F",
                    "499",
                    "--call-graph",
                    "dwarf,16384",
                    "-p",
                    &pid.to_string(),
                    "-o",
                ])
                .arg(file.with_extension("perf"))
                .args(["--", "sleep", "8"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            std::thread::spawn(move || {
                let out = std::process::Command::new("kubectl")
                    .args(["get", "--raw", "/debug/pprof/profile?seconds=8"])
                    .env("KUBECONFIG", admin)
                    .output();
                if let Ok(out) = out {
                    let _ = std::fs::write(file, out.stdout);
                }
            })
        })
    };
    let profiling = if backlog {
        start_profiling()
    } else {
        // Built before the clock starts: the trickle's key pairs are not its creation time.
        let trickle: Option<Vec<CertificateSigningRequest>> = (mode == Mode::Trickle).then(|| {
            names
                .iter()
                .map(|name| serde_json::from_value(kubelet_client_csr(name)).expect("csr"))
                .collect()
        });
        // Once it is up (its first list done): give it a second, then the CSRs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        machine_before = machine_jiffies();
        server_before = server_ticks();
        bench_before = process_ticks(std::process::id());
        let profiling = start_profiling();
        // A burst's latencies count from its start (one create request for all).
        let creating = Instant::now();
        *created_at.lock().expect("created") = Some(creating);
        match trickle {
            Some(csrs) => create_trickle(bootstrap, csrs, &created_each).await,
            None => create_batch(plane, dir.path(), &names),
        }
        created_per_second = n as f64 / creating.elapsed().as_secs_f64();
        profiling
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while issued_at.lock().expect("issued").len() < n {
        assert!(
            Instant::now() < deadline,
            "{prefix}: not all issued in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    let machine_after = machine_jiffies();
    let server_after = server_ticks();
    let bench_after = process_ticks(std::process::id());
    let cpu_ms = process_ticks(pid) as f64 * MS_PER_TICK;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    if let Some(profiling) = profiling {
        let _ = profiling.join();
    }
    let most_connections = sampler.join().expect("sampler");
    drop(_process);
    watch.abort();
    let created = created_at.lock().expect("created").expect("created");
    let from = if backlog { started } else { created };
    let issued = issued_at.lock().expect("issued");
    let last = issued.values().max().copied().unwrap_or(from);
    let created_each = created_each.lock().expect("created");
    let mut latencies: Vec<Duration> = issued
        .iter()
        .map(|(name, at)| {
            let since = created_each.get(name).copied().unwrap_or(created);
            at.saturating_duration_since(since)
        })
        .collect();
    latencies.sort();
    let requests = requests(plane, who, audit_before);
    Run {
        who,
        mode,
        per_second: n as f64 / last.saturating_duration_since(from).as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        requests_per_csr: requests as f64 / n as f64,
        peak_rss_mib: peak as f64 / 1024.0,
        connections: most_connections,
        cpu_ms_per_csr: cpu_ms / n as f64,
        machine_busy_percent: 100.0 * (machine_after.0 - machine_before.0) as f64
            / (machine_after.1 - machine_before.1).max(1) as f64,
        created_per_second,
        server_cpu_ms_per_csr: (server_after - server_before) as f64 * MS_PER_TICK / n as f64,
        bench_cpu_ms_per_csr: (bench_after - bench_before) as f64 * MS_PER_TICK / n as f64,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let (Some(kubeconfig), Some(certificate)) = (
        std::env::var_os(FLOOR_KUBECONFIG),
        std::env::var_os(FLOOR_CERTIFICATE),
    ) {
        let certificate = std::fs::read(certificate).expect("the floor's certificate");
        floor_controller(kubeconfig.into(), certificate).await;
        return;
    }
    let (n, rounds) = count_and_rounds(2000, 3);
    // Optional words narrow a run while investigating: `burst`, `backlog` or `trickle`;
    // `csr-warden` or `kcm`. `kcm-sa` runs kube-controller-manager with ServiceAccount
    // credentials (name `kcm` and `csr-warden` too, to run them beside it). The figures for
    // BENCHMARKS.md come from the full run.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        .collect();
    let wanted = |word: &str, family: &[&str]| {
        !words.iter().any(|w| family.contains(&w.as_str())) || words.iter().any(|w| w == word)
    };
    let modes: Vec<Mode> = [Mode::Burst, Mode::Backlog, Mode::Trickle]
        .into_iter()
        .filter(|&mode| wanted(mode.word(), &["burst", "backlog", "trickle"]))
        .collect();
    let whos: Vec<Who> = [
        Who::ControllerManager,
        Who::ControllerManagerSa,
        Who::CsrWarden,
    ]
    .into_iter()
    .chain([Who::Floor])
    .filter(|&who| match who {
        Who::ControllerManagerSa | Who::Floor => words.iter().any(|w| w == who.word()),
        _ => wanted(who.word(), &["csr-warden", "kcm", "kcm-sa"]),
    })
    .collect();
    let Some(assets) = assets_or_skip("vs_controller_manager") else {
        return;
    };
    // What kubeadm binds for bootstrap tokens; csr-warden as its ServiceAccount with the
    // manifests' RBAC; the trickle's creator is the admin impersonating the bootstrap identity,
    // as kubectl's --as does for the burst.
    let cluster = BenchCluster::start(&assets).await;
    let (plane, token_kubeconfig) = (&cluster.plane, &cluster.token_kubeconfig);
    let (client, bootstrap) = (&cluster.admin, &cluster.bootstrap);

    if words.iter().any(|w| w == "baseline") {
        // The most a burst can show: how fast kubectl creates the CSRs with no controller at all.
        let dir = tempfile::tempdir().expect("dir");
        let names: Vec<String> = (0..n).map(|i| format!("baseline-{i:05}")).collect();
        let creating = Instant::now();
        create_batch(plane, dir.path(), &names);
        eprintln!(
            "baseline: kubectl created {n} CSRs at {:.0}/s with no controller running",
            n as f64 / creating.elapsed().as_secs_f64()
        );
        // Gone before the runs: neither controller is to work on them.
        let batch = dir.path().join("batch.json");
        plane.kubectl(
            &["delete", "--wait=false", "-f", &batch.display().to_string()],
            None,
        );
    }
    let bench = Bench {
        plane,
        client,
        bootstrap,
        token_kubeconfig,
    };
    let mut runs = Vec::new();
    for round in 0..rounds {
        for &mode in &modes {
            for &who in &whos {
                let run = run_once(&bench, who, mode, n, round).await;
                eprintln!("{run:?}");
                runs.push(run);
                // Every run starts from the same empty cluster, as kube-controller-manager's
                // csrcleaner keeps a real one: left in place, the finished CSRs would grow to
                // tens of thousands by the last round and each later run would list more.
                delete_every_csr(client).await;
            }
        }
    }
    println!(
        "\n{n} kubelet client CSRs (a trickle: {TRICKLE_CSRS} at {TRICKLE_PER_SECOND}/s, its CPU per CSR including what the idle server spends meanwhile), median of {rounds} interleaved rounds\n\n| mode | controller | CSRs/s | p50 create->cert | p99 | API requests per CSR | peak RSS | connections | controller CPU per CSR | kube-apiserver + etcd CPU per CSR | bench CPU per CSR | machine busy | created/s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for &mode in &modes {
        for &who in &whos {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.who == who && r.mode == mode)
                .collect();
            let m = |f: &dyn Fn(&Run) -> f64| median(these.iter().map(|r| f(r)).collect());
            println!(
                "| {} | {} | {:.0} | {:.2} s | {:.2} s | {:.2} | {:.1} MiB | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} % | {:.0} |",
                mode.word(),
                who.label(),
                m(&|r| r.per_second),
                m(&|r| r.p50.as_secs_f64()),
                m(&|r| r.p99.as_secs_f64()),
                m(&|r| r.requests_per_csr),
                m(&|r| r.peak_rss_mib),
                m(&|r| r.connections as f64),
                m(&|r| r.cpu_ms_per_csr),
                m(&|r| r.server_cpu_ms_per_csr),
                m(&|r| r.bench_cpu_ms_per_csr),
                m(&|r| r.machine_busy_percent),
                m(&|r| r.created_per_second),
            );
        }
    }
}
