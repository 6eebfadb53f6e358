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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; a number sets the CSR count.
    let total: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
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

    // Info logs only, so that the harness parsing them steals less of the CPU being measured.
    let controller = ControllerProcess::start_logging(&server, dir.path(), &ca, &[], "info");
    controller
        .wait_for_log("synced", |l| l["message"] == "watch synced; deciding CSRs")
        .await;

    eprintln!("creating {total} CSRs ...");
    let start = Instant::now();
    let mut created: HashMap<String, Instant> = HashMap::with_capacity(total);
    for (token, object) in batch {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        created.insert(name, Instant::now());
        server.create_csr(&token, object);
    }
    let created_in = start.elapsed();
    let expected_certificates = 3 * quarter;
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
        if start.elapsed() > Duration::from_secs(1800) {
            panic!("not done after 30 minutes: {decided} decided, {issued} issued");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = controller.pid().and_then(peak_rss_kib);
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
        "loadtest: {total} CSRs ({quarter} each: kubelet client, kubelet serving, allow-listed user, system:masters)"
    );
    println!("  created in                 {:>9.2?}", created_in);
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
}
