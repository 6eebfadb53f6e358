//! The generic runtime's workers and retry timers (src/kube/work.rs), on paused time: what a
//! failing object waits, and that an API server coming back cuts the wait short.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csr_warden::kube::queue::Placement;
use csr_warden::kube::work::{
    FIRST_RETRY, LAST_RETRY, Lane, PROBE_INTERVAL, Reconciler, Rules, Work, backoff, retry_forever,
    work_forever,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use tokio::time::Instant;

struct Everything;

impl Rules<ConfigMap> for Everything {
    fn wanted(&self, _: &ConfigMap) -> bool {
        true
    }
    fn placement(&self, _: &ConfigMap) -> Placement {
        Placement {
            requester: "anyone".into(),
            created: 0,
        }
    }
}

/// Fails while `failing` says so, with a connection error or not; records when it was called.
struct Recorder {
    failing: AtomicBool,
    connection: bool,
    calls: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    hold: Duration,
}

impl Recorder {
    fn new(connection: bool) -> Self {
        Recorder {
            failing: AtomicBool::new(true),
            connection,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            hold: Duration::ZERO,
        }
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Reconciler<ConfigMap> for Recorder {
    type Error = String;

    async fn reconcile(&self, _: Arc<ConfigMap>) -> Result<(), String> {
        self.calls.lock().expect("calls").push(Instant::now());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            Err("fails".into())
        } else {
            Ok(())
        }
    }

    fn is_connection_error(&self, _: &String) -> bool {
        self.connection
    }

    fn failed(&self, _: &str, _: &String, _: u32, _: Duration) {}
}

fn config_map(name: &str) -> ConfigMap {
    let mut object = ConfigMap::default();
    object.metadata.name = Some(name.into());
    object.metadata.namespace = Some("default".into());
    object.metadata.uid = Some(format!("uid-{name}"));
    object
}

type TestWork = Work<ConfigMap, Everything>;

fn cached(names: &[&str]) -> (Arc<TestWork>, Writer<ConfigMap>) {
    let (store, mut writer) = reflector::store();
    for name in names {
        writer.apply_watcher_event(&watcher::Event::Apply(config_map(name)));
    }
    (Arc::new(Work::new(store, Everything)), writer)
}

/// Wait (in paused time, which jumps ahead whenever every task waits) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn backoff_doubles_from_the_first_delay_to_the_last_with_at_most_half_again_of_jitter() {
    let cases = [
        (1, 0.0, FIRST_RETRY),
        (2, 0.0, FIRST_RETRY * 2),
        (3, 0.0, FIRST_RETRY * 4),
        (1, 1.0, FIRST_RETRY.mul_f64(1.5)),
        (7, 0.0, FIRST_RETRY * 64),
        (8, 0.0, LAST_RETRY),
        (1_000, 0.0, LAST_RETRY),
        (u32::MAX, 1.0, LAST_RETRY.mul_f64(1.5)),
    ];
    for (failures, jitter, expected) in cases {
        assert_eq!(
            backoff(failures, jitter),
            expected,
            "failure {failures}, jitter {jitter}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_object_waits_its_backoff_each_time_and_stops_when_it_succeeds() {
    let (work, _writer) = cached(&["a"]);
    let reconciler = Arc::new(Recorder::new(false));
    tokio::spawn(retry_forever(work.clone(), || async { true }));
    tokio::spawn(work_forever(work.clone(), reconciler.clone(), Lane::Main));
    work.offer_everything();
    until("four tries", || reconciler.calls().len() >= 4).await;
    reconciler.failing.store(false, Ordering::SeqCst);
    until("a success", || work.failures_of("default/a") == 0).await;
    let calls = reconciler.calls();
    for (n, pair) in calls.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        let least = backoff(n as u32 + 1, 0.0);
        assert!(
            waited >= least && waited <= least.mul_f64(1.5) + Duration::from_millis(20),
            "try {} came {waited:?} after the one before; its backoff is {least:?} to 1.5 times that",
            n + 2
        );
    }
    let tries = calls.len();
    tokio::time::sleep(LAST_RETRY * 2).await;
    assert_eq!(
        reconciler.calls().len(),
        tries,
        "no retry after the success"
    );
}

#[tokio::test(start_paused = true)]
async fn connection_failures_are_retried_as_soon_as_the_api_server_answers_again() {
    let (work, _writer) = cached(&["a", "b"]);
    let reconciler = Arc::new(Recorder::new(true));
    let server_up = Arc::new(AtomicBool::new(false));
    let probe = {
        let server_up = server_up.clone();
        move || {
            let up = server_up.load(Ordering::SeqCst);
            async move { up }
        }
    };
    tokio::spawn(retry_forever(work.clone(), probe));
    tokio::spawn(work_forever(work.clone(), reconciler.clone(), Lane::Main));
    work.offer_everything();
    // Down long enough for each backoff to grow to half a minute and more.
    until("seven failures each", || work.failures_of("default/b") >= 7).await;
    let back = Instant::now();
    reconciler.failing.store(false, Ordering::SeqCst);
    server_up.store(true, Ordering::SeqCst);
    until("both retried", || {
        work.failures_of("default/a") == 0 && work.failures_of("default/b") == 0
    })
    .await;
    let last = *reconciler.calls().last().expect("calls");
    assert!(
        last - back <= PROBE_INTERVAL + Duration::from_millis(50),
        "retried {:?} after the API server came back; the backoff was {:?} or more",
        last - back,
        backoff(7, 0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_failing_while_the_api_server_answers_keeps_its_backoff() {
    let (work, _writer) = cached(&["a"]);
    // A 503 for this object alone: the probe says the server is up all along.
    let reconciler = Arc::new(Recorder::new(true));
    tokio::spawn(retry_forever(work.clone(), || async { true }));
    tokio::spawn(work_forever(work.clone(), reconciler.clone(), Lane::Main));
    work.offer_everything();
    until("five tries", || reconciler.calls().len() >= 5).await;
    let calls = reconciler.calls();
    let waited = calls[4] - calls[3];
    assert!(
        waited >= backoff(4, 0.0),
        "the fifth try came {waited:?} after the fourth, inside its backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_offered_again_while_worked_is_worked_again_after_by_one_worker() {
    let (work, _writer) = cached(&["a"]);
    let mut reconciler = Recorder::new(false);
    reconciler.failing = AtomicBool::new(false);
    reconciler.hold = Duration::from_secs(1);
    let reconciler = Arc::new(reconciler);
    for _ in 0..4 {
        tokio::spawn(work_forever(work.clone(), reconciler.clone(), Lane::Main));
    }
    work.offer_everything();
    until("taken", || reconciler.calls().len() == 1).await;
    work.offer_everything();
    work.offer_everything();
    until("worked again", || reconciler.calls().len() == 2).await;
    until("idle", || work.sizes() == (0, 0)).await;
    assert_eq!(
        reconciler.calls().len(),
        2,
        "queued once however often offered"
    );
    assert_eq!(
        reconciler.most_in_flight.load(Ordering::SeqCst),
        1,
        "one worker at a time"
    );
}
