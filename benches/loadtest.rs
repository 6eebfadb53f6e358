//! Load test: the release controller against the in-process fake API server with 10,000 CSRs
//! (kubelet client, kubelet serving, allow-listed user, forbidden group, a quarter each).
//! Reports time to final state, throughput, p50/p99 latency from creation to decision and to
//! certificate, and the controller's peak RSS. `cargo bench --bench loadtest [-- N]`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;

const LOADTEST_POLICY: &str = r#"
allowList:
  - commonNamePattern: 'user-[0-9]+'
    groups: [developers]
    requesters: { groups: [loadtest-minters] }
"#;

fn p(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn csr_pem(cn: &str, o: &str, sans: &[String]) -> String {
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    rcgen_csr(cn, &[o], &sans)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench --bench loadtest -- [N] [--backlog] [--finished M] [--concurrency C]`:
    // N new CSRs (default 10,000); --backlog creates them before the controller starts (a
    // restart into a backlog) instead of while it runs; --finished adds M already-issued CSRs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag_value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let backlog = args.iter().any(|a| a == "--backlog");
    // --outage S: once a third of the CSRs are decided, the API server goes down for S seconds
    // (connections dropped and refused) and comes back with a new watch cache (410 to the old
    // watch); reports how long after its return the last CSR was issued.
    let outage = flag_value("--outage").map(|s| Duration::from_secs(s as u64));
    let finished = flag_value("--finished").unwrap_or(0);
    let concurrency = flag_value("--concurrency");
    let total: usize = args
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            *i == 0
                || !matches!(
                    args[i - 1].as_str(),
                    "--finished" | "--concurrency" | "--outage"
                )
        })
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(10_000);
    let quarter = total / 4;
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    std::fs::write(dir.path().join("policy.yaml"), LOADTEST_POLICY).expect("policy");
    server.add_user(
        "bootstrap",
        "system:bootstrap:load",
        &["system:bootstrappers"],
    );
    server.add_user("minter", "minter", &["loadtest-minters"]);
    server.add_user("smith", "agent-smith", &[]);
    server.allow_sar("system:bootstrappers", "nodeclient");

    eprintln!("preparing {total} CSRs ...");
    let mut batch = Vec::with_capacity(total);
    for i in 0..quarter {
        let node = format!("node-{i}");
        batch.push((
            "bootstrap".to_owned(),
            csr_object(
                &format!("client-{i}"),
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &csr_pem(&format!("system:node:{node}"), "system:nodes", &[]),
            ),
        ));
        let token = format!("node-token-{i}");
        server.add_user(&token, &format!("system:node:{node}"), &["system:nodes"]);
        server.add_node(
            &node,
            &[
                (
                    "InternalIP",
                    &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                ),
                ("Hostname", &node),
            ],
        );
        batch.push((
            token,
            csr_object(
                &format!("serving-{i}"),
                KUBELET_SERVING_SIGNER,
                &["digital signature", "server auth"],
                &csr_pem(
                    &format!("system:node:{node}"),
                    "system:nodes",
                    std::slice::from_ref(&node),
                ),
            ),
        ));
        batch.push((
            "minter".to_owned(),
            csr_object(
                &format!("user-{i}"),
                CLIENT_SIGNER,
                &["client auth"],
                &csr_pem(&format!("user-{i}"), "developers", &[]),
            ),
        ));
        batch.push((
            "smith".to_owned(),
            csr_object(
                &format!("smith-{i}"),
                CLIENT_SIGNER,
                &["client auth"],
                &csr_pem(&format!("smith-{i}"), "system:masters", &[]),
            ),
        ));
    }
    let total = batch.len();

    if finished > 0 {
        eprintln!("adding {finished} finished (issued) CSRs ...");
        let pem = csr_pem("old-user", "developers", &[]);
        let certificate = openssl_ca(dir.path(), KeyKind::P256, 30);
        let certificate = std::fs::read_to_string(&certificate.0).expect("a certificate");
        for i in 0..finished {
            server.create_issued_csr(
                "minter",
                csr_object(&format!("old-{i}"), CLIENT_SIGNER, &["client auth"], &pem),
                &certificate,
            );
        }
    }

    let concurrency = concurrency.map(|c| c.to_string());
    let mut extra: Vec<&str> = Vec::new();
    if let Some(c) = &concurrency {
        extra.extend(["--concurrency", c.as_str()]);
    }
    let mut created: HashMap<String, Instant> = HashMap::with_capacity(total);
    let create_all = |created: &mut HashMap<String, Instant>| {
        for (token, object) in batch {
            let name = object["metadata"]["name"]
                .as_str()
                .expect("name")
                .to_owned();
            created.insert(name, Instant::now());
            server.create_csr(&token, object);
        }
    };
    let (controller, start, created_in) = if backlog {
        eprintln!("creating {total} CSRs before the controller starts ...");
        let before = Instant::now();
        create_all(&mut created);
        let created_in = before.elapsed();
        // A backlog's latency counts from the controller's start, as after an outage.
        let start = Instant::now();
        for at in created.values_mut() {
            *at = start;
        }
        let controller = ControllerProcess::start_logging(&server, dir.path(), &ca, &extra, "info");
        controller.wait_synced().await;
        println!(
            "  start to ready (watch synced) with {} CSRs present: {:.2?}",
            total + finished,
            start.elapsed()
        );
        (controller, start, created_in)
    } else {
        // Info logs only, so that the harness parsing them steals less of the CPU being measured.
        let controller = ControllerProcess::start_logging(&server, dir.path(), &ca, &extra, "info");
        let synced_at = Instant::now();
        controller.wait_synced().await;
        if finished > 0 {
            println!(
                "  ready with {finished} finished CSRs after {:.2?}",
                synced_at.elapsed()
            );
        }
        eprintln!("creating {total} CSRs ...");
        let start = Instant::now();
        create_all(&mut created);
        (controller, start, start.elapsed())
    };
    let expected_certificates = 3 * quarter;
    let mut came_back: Option<Instant> = None;
    let mut outage = outage;
    let done = loop {
        let writes = server.writes();
        let decided = writes
            .iter()
            .filter(|w| w.subresource == "approval" && w.outcome == 200)
            .count();
        let issued = writes
            .iter()
            .filter(|w| w.subresource == "status" && w.outcome == 200)
            .count();
        if decided == total && issued == expected_certificates {
            break start.elapsed();
        }
        if let Some(down_for) = outage
            && decided >= total / 3
        {
            outage = None;
            eprintln!("API server down for {down_for:?} after {decided} decisions ...");
            server.go_down();
            tokio::time::sleep(down_for).await;
            server.come_up();
            came_back = Some(Instant::now());
        }
        if start.elapsed() > Duration::from_secs(1800) {
            panic!("not done after 30 minutes: {decided} decided, {issued} issued");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = controller.pid().and_then(peak_rss_kib);
    // Settled: the same process a while after the work is done.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = controller.pid().and_then(rss_kib);
    let (most_connections, open_connections) = server.connections();
    let writes = server.writes();
    let latency = |sub: &str| {
        let mut all: Vec<Duration> = writes
            .iter()
            .filter(|w| w.subresource == sub && w.outcome == 200)
            .filter_map(|w| {
                created
                    .get(&w.csr)
                    .map(|c| w.at.saturating_duration_since(*c))
            })
            .collect();
        all.sort();
        all
    };
    let decision = latency("approval");
    let certificate = latency("status");
    let conflicts = writes.iter().filter(|w| w.outcome == 409).count();
    controller.kill().await;

    println!(
        "loadtest: {total} CSRs ({quarter} each: kubelet client, kubelet serving, allow-listed user, system:masters), {}, {finished} finished CSRs present",
        if backlog {
            "backlog (created before the controller started)"
        } else {
            "burst (created while it runs)"
        }
    );
    println!("  created in                 {:>9.2?}", created_in);
    if let Some(back) = came_back {
        let after: Vec<Instant> = writes
            .iter()
            .filter(|w| w.outcome == 200 && w.at >= back)
            .map(|w| w.at)
            .collect();
        let since = |at: Option<&Instant>| at.map(|at| at.saturating_duration_since(back));
        println!(
            "  after the API server came back: first write {:.2?}, last {:.2?}",
            since(after.iter().min()).unwrap_or_default(),
            since(after.iter().max()).unwrap_or_default()
        );
    }
    println!("  all final after            {:>9.2?}", done);
    println!(
        "  throughput                 {:>9.0} CSRs/s",
        total as f64 / done.as_secs_f64()
    );
    println!(
        "  creation -> decision  p50  {:>9.2?}  p99 {:>9.2?}",
        p(&decision, 0.5),
        p(&decision, 0.99)
    );
    println!(
        "  creation -> cert      p50  {:>9.2?}  p99 {:>9.2?}",
        p(&certificate, 0.5),
        p(&certificate, 0.99)
    );
    println!("  409 conflicts              {conflicts:>9}");
    match rss {
        Some(kib) => println!(
            "  controller peak RSS        {:>9.1} MiB",
            kib as f64 / 1024.0
        ),
        None => println!("  controller peak RSS        unknown"),
    }
    if let Some(kib) = settled {
        println!(
            "  controller RSS settled     {:>9.1} MiB (10 s after the last write)",
            kib as f64 / 1024.0
        );
    }
    println!(
        "  connections to the API server: at most {most_connections} at once, {open_connections} open at the end"
    );
}
