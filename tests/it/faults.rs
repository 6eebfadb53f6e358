//! Faults: with the API server misbehaving, every CSR still ends in exactly the state the policy
//! says, with one decision condition, at most one certificate and one Event per decision (and
//! one per CSR left for a human).

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::apiserver::{ErrorFault, Faults, Method};
use support::*;

const BATCH_POLICY: &str = r#"
allowList:
  - commonNamePattern: 'user-[0-9]+'
    groups: [developers]
    requesters: { groups: [minters] }
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Issued,
    Denied,
    Untouched,
}

struct Batch {
    server: FakeApiServer,
    dir: tempfile::TempDir,
    ca: (std::path::PathBuf, std::path::PathBuf),
    expected: Vec<(String, Expect)>,
}

impl Batch {
    async fn new() -> Batch {
        let server = FakeApiServer::start().await;
        let dir = tempfile::tempdir().expect("dir");
        let ca = openssl_ca(dir.path(), KeyKind::P256, 365);
        std::fs::write(dir.path().join("policy.yaml"), BATCH_POLICY).expect("policy");
        server.add_user("minter", "minter", &["minters"]);
        server.add_user("bootstrap", "system:bootstrap:x", &["system:bootstrappers"]);
        server.add_user("smith", "agent-smith", &[]);
        server.add_user("bob", "bob", &[]);
        server.allow_sar("system:bootstrappers", "nodeclient");
        Batch {
            server,
            dir,
            ca,
            expected: Vec::new(),
        }
    }

    /// Create `n` of each kind: allow-listed user and kubelet client (issued), system:masters
    /// (denied), an unmatched user (left untouched).
    fn create(&mut self, tag: &str, n: usize) {
        for i in 0..n {
            let key = |cn: &str, o: &str| rcgen_csr(cn, &[o], &[]);
            let items = [
                (
                    "minter",
                    format!("user-{tag}{i}"),
                    CLIENT_SIGNER,
                    vec!["client auth"],
                    key(&format!("user-{i}"), "developers"),
                    Expect::Issued,
                ),
                (
                    "bootstrap",
                    format!("node-{tag}{i}"),
                    KUBELET_CLIENT_SIGNER,
                    vec!["digital signature", "client auth"],
                    key(&format!("system:node:n{i}"), "system:nodes"),
                    Expect::Issued,
                ),
                (
                    "smith",
                    format!("smith-{tag}{i}"),
                    CLIENT_SIGNER,
                    vec!["client auth"],
                    key("agent-smith", "system:masters"),
                    Expect::Denied,
                ),
                (
                    "bob",
                    format!("bob-{tag}{i}"),
                    CLIENT_SIGNER,
                    vec!["client auth"],
                    key("bob", "ops"),
                    Expect::Untouched,
                ),
            ];
            for (token, name, signer, usages, pem, expect) in items {
                self.server
                    .create_csr(token, csr_object(&name, signer, &usages, &pem));
                self.expected.push((name, expect));
            }
        }
    }

    fn settled(&self) -> bool {
        self.expected.iter().all(|(name, expect)| {
            let Some(csr) = self.server.csr(name) else {
                return false;
            };
            let events = self.server.events_for(name).len();
            match expect {
                Expect::Issued => certificate_pem(&csr).is_some() && events == 2,
                Expect::Denied => condition(&csr, "Denied").is_some() && events == 1,
                // Left for a human: no write, one Event saying why.
                Expect::Untouched => events == 1,
            }
        })
    }

    async fn wait_settled(&self, controller: &ControllerProcess) {
        self.server
            .wait_for("every CSR in its final state", |_| self.settled())
            .await;
        // Untouched CSRs: the controller has looked at each (leave logged) and written nothing.
        for (name, expect) in &self.expected {
            if *expect == Expect::Untouched {
                controller
                    .wait_for_log("left pending", |l| {
                        l["csr"] == name.as_str() && l["decision"] == "leave"
                    })
                    .await;
            }
        }
    }

    fn assert_exact(&self) {
        let writes = self.server.writes();
        for (name, expect) in &self.expected {
            let csr: Value = self.server.csr(name).expect("csr");
            let types = condition_types(&csr);
            let ok = |sub: &str| {
                writes
                    .iter()
                    .filter(|w| &w.csr == name && w.subresource == sub && w.outcome == 200)
                    .count()
            };
            let events = self.server.events_for(name);
            match expect {
                Expect::Issued => {
                    assert_eq!(types, ["Approved"], "{name}");
                    assert_eq!(
                        (ok("approval"), ok("status")),
                        (1, 1),
                        "{name}: one decision, one certificate"
                    );
                    let reasons: Vec<&str> =
                        events.iter().filter_map(|e| e["reason"].as_str()).collect();
                    assert_eq!(reasons.len(), 2, "{name}: {reasons:?}");
                    assert_eq!(reasons[1], "Issued", "{name}");
                    assert!(certificate_pem(&csr).is_some());
                }
                Expect::Denied => {
                    assert_eq!(types, ["Denied"], "{name}");
                    assert_eq!((ok("approval"), ok("status")), (1, 0), "{name}");
                    assert_eq!(events.len(), 1, "{name}");
                    assert_eq!(events[0]["reason"], "ForbiddenGroup");
                }
                Expect::Untouched => {
                    assert!(types.is_empty(), "{name}: {types:?}");
                    assert_eq!(
                        writes.iter().filter(|w| &w.csr == name).count(),
                        0,
                        "{name}"
                    );
                    let reasons: Vec<&str> =
                        events.iter().filter_map(|e| e["reason"].as_str()).collect();
                    assert_eq!(reasons, ["NoMatchingRule"], "{name}: one Event saying why");
                }
            }
        }
    }

    fn start(&self) -> ControllerProcess {
        self.start_with(&[])
    }

    fn start_with(&self, flags: &[&str]) -> ControllerProcess {
        ControllerProcess::start(&self.server, self.dir.path(), &self.ca, flags)
    }
}

fn errors(faults: &mut Faults, method: Option<Method>, path: &str, status: u16, n: usize) {
    faults.errors.push(ErrorFault::new(method, path, status, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_on_every_kind_of_call() {
    let mut batch = Batch::new().await;
    batch.server.arm(|f| {
        errors(f, Some(Method::GET), "/certificatesigningrequests", 503, 2);
        errors(f, Some(Method::PUT), "/approval", 500, 3);
        errors(f, Some(Method::PUT), "/approval", 429, 2);
        errors(f, Some(Method::PUT), "/status", 503, 3);
        errors(f, Some(Method::POST), "/events", 500, 3);
        errors(f, Some(Method::POST), "/subjectaccessreviews", 500, 2);
    });
    batch.create("a", 3);
    let controller = batch.start();
    batch.wait_settled(&controller).await;
    batch.assert_exact();
    let errors = batch
        .server
        .writes()
        .iter()
        .filter(|w| w.outcome >= 500 || w.outcome == 429)
        .count();
    assert_eq!(
        errors, 0,
        "injected errors answer before the write is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cut_mid_event_and_410_gone() {
    let mut batch = Batch::new().await;
    batch.server.arm(|f| {
        f.cut_watches = 3;
        f.cut_after_events = 2;
        f.gone_watches = 2;
    });
    let controller = batch.start();
    controller.wait_synced().await;
    batch.create("b", 3);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
    let (_, metrics) = controller.http_get("/metrics").await;
    let restarts = metric_sample(&metrics, "csr_warden_watch_restarts_total").unwrap_or(0.0);
    assert!(
        restarts >= 1.0,
        "410 Gone makes the watcher relist: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_approval_and_status_writes() {
    let mut batch = Batch::new().await;
    batch.server.arm(|f| {
        f.conflict_approvals = 4;
        f.conflict_status = 4;
    });
    batch.create("c", 3);
    let controller = batch.start();
    batch.wait_settled(&controller).await;
    batch.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_drops_every_connection() {
    let mut batch = Batch::new().await;
    batch.create("d", 2);
    let controller = batch.start();
    batch.wait_settled(&controller).await;
    batch.server.restart();
    batch.server.arm(|f| errors(f, None, "/", 503, 3));
    batch.create("e", 2);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses() {
    let mut batch = Batch::new().await;
    batch.server.arm(|f| f.delay = Duration::from_millis(150));
    batch.create("f", 2);
    let controller = batch.start();
    batch.wait_settled(&controller).await;
    batch.assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_service_account_token_is_picked_up() {
    let mut batch = Batch::new().await;
    // The controller reads its token from a file, as in a pod (projected token).
    let token_file = batch.dir.path().join("token");
    std::fs::write(&token_file, apiserver::CONTROLLER_TOKEN).expect("token");
    let kubeconfig = batch
        .server
        .kubeconfig(batch.dir.path(), apiserver::CONTROLLER_TOKEN);
    let text = std::fs::read_to_string(&kubeconfig)
        .expect("kubeconfig")
        .replace(
            &format!("token: {}", apiserver::CONTROLLER_TOKEN),
            &format!("tokenFile: {}", token_file.display()),
        );
    std::fs::write(&kubeconfig, text).expect("kubeconfig");
    batch.create("g", 1);
    let controller =
        ControllerProcess::start_with_kubeconfig(batch.dir.path(), &batch.ca, &[], &kubeconfig);
    batch.wait_settled(&controller).await;
    // Rotate: the old token is refused from now on; the new one is in the file. kube-client
    // re-reads a token file every minute, so recovery takes up to that long (plus backoff).
    batch
        .server
        .rotate_token(apiserver::CONTROLLER_TOKEN, "rotated-token");
    std::fs::write(&token_file, "rotated-token").expect("rotate");
    batch.create("h", 1);
    batch
        .server
        .wait_for_within(
            "settled with the new token",
            Duration::from_secs(240),
            |_| batch.settled(),
        )
        .await;
    batch.wait_settled(&controller).await;
    batch.assert_exact();
    assert!(
        batch.server.unauthorized() > 0,
        "the old token was refused at least once before the reload"
    );
}

/// The approval writes that succeeded.
fn approvals(server: &FakeApiServer) -> usize {
    server
        .writes()
        .iter()
        .filter(|w| w.subresource == "approval" && w.outcome == 200)
        .count()
}

/// Issue 14, as measured on a real kube-apiserver: the server is killed mid-burst and started
/// again; the clients' retried creates land as soon as it is back. Its new watch cache answers
/// the controller's resumed watch with 410 Gone, and the relist spans several pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_killed_mid_burst_misses_no_csr() {
    let mut batch = Batch::new().await;
    batch.server.arm(|f| f.page_limit = Some(3));
    batch.create("before", 8);
    let controller = batch.start();
    batch
        .server
        .wait_for("the burst under way", |s| approvals(s) >= 4)
        .await;
    batch.server.go_down();
    batch
        .server
        .wait_for("the controller trying to reconnect", |s| s.refused() >= 1)
        .await;
    batch.server.come_up();
    batch.create("after", 8);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
}

/// A watch that stays open but brings nothing (a half-open connection after a restart) is
/// restarted once it has been silent for the watch timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_watch_is_restarted() {
    let mut batch = Batch::new().await;
    let controller = batch.start_with(&["--watch-timeout-seconds", "1"]);
    controller.wait_synced().await;
    // The next watch (after the relist the restart forces) is answered and then stays silent.
    batch.server.arm(|f| f.stall_watches = 1);
    batch.server.restart();
    batch.create("s", 2);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
}

/// A CSR the watch never delivered is found by the resync, handled exactly once, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_finds_a_csr_the_watch_missed() {
    let mut batch = Batch::new().await;
    let controller = batch.start_with(&["--resync-interval-seconds", "1"]);
    controller.wait_synced().await;
    // The first CSR created (an allow-listed user's) reaches no watcher.
    batch.server.arm(|f| f.hide_creations = 1);
    batch.create("h", 1);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
    let recovered = controller
        .wait_for_log("the resync's report", |l| {
            l["message"] == "the CSR watch missed this CSR; handling it from a fresh read"
        })
        .await;
    assert_eq!(recovered["csr"], "user-h0");
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_resync_recovered_total"),
        Some(1.0),
        "{metrics}"
    );
}

/// With a healthy watch the resync finds nothing, however often it runs while CSRs come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_counts_nothing_while_the_watch_is_healthy() {
    let mut batch = Batch::new().await;
    let controller = batch.start_with(&["--resync-interval-seconds", "1"]);
    for round in 0..3 {
        batch.create(&format!("r{round}"), 2);
        batch.wait_settled(&controller).await;
        let resyncs_so_far = round + 1;
        controller
            .wait_for_logs("another resync", resyncs_so_far, |l| {
                l["fields"]["message"] == "resync: the watch's cache is complete"
                    || l["message"] == "resync: the watch's cache is complete"
            })
            .await;
    }
    batch.assert_exact();
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_resync_recovered_total"),
        Some(0.0),
        "{metrics}"
    );
    assert!(metric_sample(&metrics, "csr_warden_resyncs_total").unwrap_or(0.0) >= 3.0);
}

fn is_clean_resync(line: &Value) -> bool {
    line["message"] == "resync: the watch's cache is complete"
}

/// Two more resyncs that find nothing than have been logged so far.
async fn two_more_clean_resyncs(controller: &ControllerProcess) {
    let so_far = controller
        .lines()
        .iter()
        .filter(|l| is_clean_resync(l))
        .count();
    controller
        .wait_for_logs("two more clean resyncs", so_far + 2, is_clean_resync)
        .await;
}

/// At 50,000 CSRs what the resync costs is what it reads: our signers' CSRs as names and
/// resourceVersions only, and, when the watch missed nothing, not one CSR whole, however many
/// finished ones there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_reads_names_and_versions_only_and_no_csr_whole_when_nothing_was_missed() {
    let h = harness().await;
    h.server.arm(|f| f.page_limit = Some(50));
    let pem = rcgen_csr("old-user", &["developers"], &[]);
    for i in 0..200 {
        h.server.create_issued_csr(
            "jane-token",
            csr_object(&format!("old-{i}"), CLIENT_SIGNER, &["client auth"], &pem),
            &h.server.ca_pem,
        );
    }
    h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
    let controller = h.controller(&["--resync-interval-seconds", "1"]);
    controller
        .wait_for_logs("two resyncs", 2, is_clean_resync)
        .await;
    let reads = h.server.csr_reads();
    assert_eq!(reads.whole_pages_by_signer, 0, "{reads:?}");
    assert_eq!(reads.gets, 0, "{reads:?}");
    // 200 issued CSRs of one signer at 50 a page, the other signers a page each, twice.
    assert!(reads.metadata_pages >= 2 * 7, "{reads:?}");
}

/// A finished CSR changed behind the watch's back (labelled; nothing is left to do for it):
/// the resync reads it once and counts nothing, and does not read it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_csr_changed_behind_the_watchs_back_is_read_once() {
    let h = harness().await;
    let pem = rcgen_csr("old-user", &["developers"], &[]);
    h.server.create_issued_csr(
        "jane-token",
        csr_object("old", CLIENT_SIGNER, &["client auth"], &pem),
        &h.server.ca_pem,
    );
    let controller = h.controller(&["--resync-interval-seconds", "1"]);
    controller.wait_for_log("a resync", is_clean_resync).await;
    h.server.arm(|f| f.hide_updates = 1);
    h.server.label_csr("old", "team", "payments");
    controller
        .wait_for_log("the resync sees the change", |l| {
            l["csr"] == "old"
                && l["message"] == "the CSR watch missed a change to a CSR with nothing left to do"
        })
        .await;
    two_more_clean_resyncs(&controller).await;
    assert_eq!(h.server.csr_reads().gets, 1, "{:?}", h.server.csr_reads());
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(&metrics, "csr_warden_resync_recovered_total"),
        Some(0.0),
        "{metrics}"
    );
}

/// etcd restored from an older backup: the controller's resourceVersion is ahead of the server,
/// which answers "Too large resource version" for as long as the watch resumes from it. The
/// controller relists, as client-go does, instead of retrying the same resourceVersion forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_versions_going_back_make_the_watch_relist() {
    let mut batch = Batch::new().await;
    batch.create("old", 2);
    let controller = batch.start();
    batch.wait_settled(&controller).await;
    batch.server.restore_older_backup(100);
    batch.create("new", 2);
    batch.wait_settled(&controller).await;
    batch.assert_exact();
    controller
        .wait_for_log("the relist", |l| {
            l["message"]
                == "the API server cannot resume the CSR watch from where it was; relisting"
        })
        .await;
}

/// The resync replaces: a cached CSR the watch lost track of (deleted, or denied by a human,
/// and the watch never showed it) is dropped from the cache once a fresh list shows it, and
/// counted; the resync reads it once, csr-warden never approves it, and the next resyncs read
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_drops_a_csr_deleted_or_finished_behind_the_watchs_back_once() {
    for deleted in [true, false] {
        let h = harness().await;
        h.create_client_csr("bob-token", "bob", "/CN=bob/O=ops");
        let controller = h.controller(&["--resync-interval-seconds", "1"]);
        controller
            .wait_for_log("bob left pending", |l| {
                l["csr"] == "bob" && l["decision"] == "leave"
            })
            .await;
        if deleted {
            h.server.arm(|f| f.hide_deletions = 1);
            h.server.delete_csr("bob");
        } else {
            h.server.arm(|f| f.hide_updates = 1);
            h.server.deny_as_human("bob");
        }
        controller
            .wait_for_log("the resync drops bob", |l| {
                l["csr"] == "bob"
                    && l["message"]
                        == "the CSR watch missed that this CSR was deleted or finished; dropping it from the cache"
            })
            .await;
        two_more_clean_resyncs(&controller).await;
        let reads = h.server.csr_reads();
        assert_eq!(reads.gets, 1, "deleted: {deleted}, {reads:?}");
        match h.server.csr("bob") {
            Some(bob) => assert_eq!(condition_types(&bob), ["Denied"]),
            None => assert!(deleted),
        }
        let (_, metrics) = controller.http_get("/metrics").await;
        assert_eq!(
            metric_sample(&metrics, "csr_warden_resync_recovered_total"),
            Some(1.0),
            "deleted: {deleted}, {metrics}"
        );
    }
}

/// A CSR found by the resync (the watch never delivered it) whose first try fails is retried
/// from the copy the resync read, not dropped until the next resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_the_resync_found_is_not_lost_when_its_first_try_fails() {
    let h = harness().await;
    let controller = h.controller(&["--resync-interval-seconds", "2"]);
    controller.wait_synced().await;
    h.server.arm(|f| {
        f.hide_creations = 1;
        f.errors
            .push(ErrorFault::new(Some(Method::PUT), "/approval", 500, 1));
    });
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    controller
        .wait_for_log("the resync finds jane", |l| {
            l["csr"] == "jane"
                && l["message"] == "the CSR watch missed this CSR; handling it from a fresh read"
        })
        .await;
    controller
        .wait_for_log("jane's first try fails", |l| {
            l["csr"] == "jane" && l["message"] == "reconcile failed; retrying"
        })
        .await;
    h.server
        .wait_for("jane issued on the retry, before another resync", |s| {
            issued(s, "jane")
        })
        .await;
    let lines = controller.kill().await;
    let found = lines
        .iter()
        .filter(|l| l["message"] == "the CSR watch missed this CSR; handling it from a fresh read")
        .count();
    assert_eq!(
        found, 1,
        "the retry, not a second resync, brought jane through"
    );
}

/// The status writes of one CSR, by their answers, in order.
fn status_answers(server: &FakeApiServer, csr: &str) -> Vec<u16> {
    server
        .writes()
        .iter()
        .filter(|w| w.csr == csr && w.subresource == "status")
        .map(|w| w.outcome)
        .collect()
}

/// The CSR is Failed with `reason`, and its Warning Event with that reason is written.
fn failed_with_event(server: &FakeApiServer, csr: &str, reason: &str) -> bool {
    let failed = server
        .csr(csr)
        .is_some_and(|c| condition(&c, "Failed").is_some_and(|f| f["reason"] == reason));
    failed
        && server
            .events_for(csr)
            .iter()
            .any(|e| e["reason"] == reason && e["type"] == "Warning")
}

/// kube-apiserver refuses to store a certificate it cannot parse (422 Invalid, as for a negative
/// serial): sending it again cannot change that, so the CSR is Failed at once
/// (`CertificateRejected`, the server's answer quoted), with a Warning Event, the `failed` log
/// line naming the refused serial and the failure metric; no certificate is stored, nothing is
/// logged as issued, and the CSR is not written again however long the controller runs. A 409
/// before the refusal is re-read as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_api_server_refuses_fails_the_csr_at_once() {
    let h = harness().await;
    h.server.arm(|f| {
        f.conflict_status = 1;
        f.refuse_certificates.push("jane".into());
    });
    h.create_client_csr("jane-token", "jane", "/CN=jane/O=developers");
    let controller = h.controller(&["--concurrency", "1", "--resync-interval-seconds", "1"]);
    h.server
        .wait_for("jane Failed, with its Warning Event", |s| {
            failed_with_event(s, "jane", "CertificateRejected")
        })
        .await;
    let jane = csr_state(&h.server, "jane");
    assert_eq!(condition_types(&jane), ["Approved", "Failed"]);
    assert_eq!(certificate_pem(&jane), None, "no certificate stored");
    let message = condition(&jane, "Failed").expect("Failed")["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains(&format!(
            "422 Invalid: CertificateSigningRequest.certificates.k8s.io \"jane\" is invalid: status.certificate: Invalid value: \"<certificate data>\": {}",
            apiserver::INVALID_CERTIFICATE
        )),
        "the server's answer, quoted: {message}"
    );
    assert!(
        message.contains("create a new CSR"),
        "what to do: {message}"
    );

    let failed = controller
        .wait_for_log("jane's failed line", |l| {
            l["csr"] == "jane" && l["decision"] == "failed"
        })
        .await;
    assert_eq!(failed["reason"], "CertificateRejected");
    let serial = failed["serial"].as_str().expect("the refused serial");
    assert!(
        serial.len() >= 16 && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{serial}"
    );
    assert!(message.contains(serial), "{message}");

    // Not retried: another CSR all the way through, two resyncs, and still the same writes.
    h.caught_up("marker").await;
    two_more_clean_resyncs(&controller).await;
    // The injected conflict, re-read; the certificate refused once; the Failed condition
    // written; then nothing. The conflict's watch event queues jane again: if the watch has not
    // brought the Failed write by the time that turn comes, the cache's older copy gets a 409
    // too and the re-read finds jane Failed.
    let answers = status_answers(&h.server, "jane");
    assert_eq!(answers.first(), Some(&409), "{answers:?}");
    let stored: Vec<u16> = answers.iter().copied().filter(|a| *a != 409).collect();
    assert_eq!(stored, [422, 200], "{answers:?}");
    assert!(answers.len() <= 4, "{answers:?}");
    let events: Vec<Value> = h.server.events_for("jane");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons, ["AutoApprovedAllowList", "CertificateRejected"]);
    let (_, metrics) = controller.http_get("/metrics").await;
    assert_eq!(
        metric_sample(
            &metrics,
            r#"csr_warden_issuance_failures_total{signer="kubernetes.io/kube-apiserver-client",reason="CertificateRejected"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let lines = controller.kill().await;
    let about_jane = log_about(&lines, "jane");
    assert!(
        !about_jane.iter().any(|l| l["decision"] == "issued"),
        "a refused certificate was never issued: {about_jane:#?}"
    );
    assert_eq!(
        about_jane
            .iter()
            .filter(|l| l["decision"] == "failed")
            .count(),
        1
    );
}

/// Which answers to the certificate's status write fail the CSR, and which are waited out:
/// 400, 413 and 422 say the write itself is wrong, and the CSR is Failed (`CertificateRejected`)
/// at the first; 403 (our RBAC), 429 and 5xx are ours or the server's, retried until the
/// certificate is stored. Each row's fault answers that CSR's status writes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_write_answers_no_retry_can_cure_fail_the_csr_and_the_others_are_retried() {
    // (answer, fails the CSR)
    const ROWS: [(u16, bool); 7] = [
        (400, true),
        (413, true),
        (422, true),
        (403, false),
        (429, false),
        (500, false),
        (503, false),
    ];
    let h = harness().await;
    h.server.arm(|f| {
        for (code, fails) in ROWS {
            // A refusal is answered once: were it retried, the next try would be stored.
            let times = if fails { 1 } else { 2 };
            let path = format!("/row-{code}/status");
            f.errors
                .push(ErrorFault::new(Some(Method::PUT), &path, code, times));
        }
    });
    for (code, _) in ROWS {
        h.create_client_csr(
            "jane-token",
            &format!("row-{code}"),
            "/CN=jane/O=developers",
        );
    }
    let controller = h.controller(&[]);
    let done = |s: &FakeApiServer, name: &str| {
        issued(s, name) && s.events_for(name).len() == 2
            || failed_with_event(s, name, "CertificateRejected")
    };
    h.server
        .wait_for("every row Failed or issued, with its Events", |s| {
            ROWS.iter().all(|(code, _)| done(s, &format!("row-{code}")))
        })
        .await;
    for (code, fails) in ROWS {
        let name = format!("row-{code}");
        let csr = csr_state(&h.server, &name);
        // Injected answers come before the server records a write: each row has one stored.
        assert_eq!(status_answers(&h.server, &name), [200], "{name}");
        let retries =
            |l: &Value| l["csr"] == name.as_str() && l["message"] == "reconcile failed; retrying";
        if fails {
            assert_eq!(condition_types(&csr), ["Approved", "Failed"], "{name}");
            assert_eq!(certificate_pem(&csr), None, "{name}");
            let refused = controller
                .wait_for_log(&format!("{name} refused"), |l| {
                    l["csr"] == name.as_str() && l["decision"] == "failed"
                })
                .await;
            assert_eq!(refused["reason"], "CertificateRejected", "{name}");
            let lines = controller.lines();
            assert_eq!(
                lines.iter().filter(|l| retries(l)).count(),
                0,
                "{name}: Failed at once"
            );
        } else {
            assert_eq!(condition_types(&csr), ["Approved"], "{name}");
            assert!(certificate_pem(&csr).is_some(), "{name}");
            controller
                .wait_for_logs(&format!("{name} retried twice"), 2, retries)
                .await;
        }
    }
}
