//! The one watch driver, for every kind csr-warden watches (CSRs, PodCertificateRequests,
//! Nodes, the API server's Service and EndpointSlices).
//!
//! kube-runtime's `watcher` lists, watches, follows bookmarks and relists on an in-stream 410.
//! Around it this driver adds what client-go's reflector does and kube-runtime does not:
//! - a relist when resuming cannot work: 410 Gone answered to the watch request itself, and
//!   "Too large resource version" (the server is behind the resourceVersion we hold: etcd
//!   restored from a backup, a watch cache that came back behind), which kube-runtime would
//!   retry with the same resourceVersion for ever;
//! - a short reconnect backoff ([`Reconnect`]): after an API server restart the objects created
//!   meanwhile arrive with the relist, so the relist must not wait for a backoff grown to
//!   half a minute during the outage.
//!
//! Errors are logged here and never end the stream: a caller sees only events.

use std::fmt::Debug;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// Reconnect delays: from [`Reconnect::FIRST`], doubling, to [`Reconnect::LAST`], each times a
/// random factor in [1, 1.5) so that replicas do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Reconnect {
    failures: u32,
    last_failure: Option<std::time::Instant>,
}

impl Reconnect {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const LAST: Duration = Duration::from_secs(2);

    /// kube-runtime resets the backoff on every item, and the watcher emits `Init` before
    /// each list attempt: a reset is honoured only after this long without a failure, so a
    /// list that keeps failing (RBAC, an overloaded server) is retried at [`Reconnect::LAST`],
    /// not every 200 ms.
    pub const QUIET: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Reconnect {
            failures: 0,
            last_failure: None,
        }
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for Reconnect {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = super::queue::doubling(self.failures, Self::FIRST, Self::LAST, jitter());
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(std::time::Instant::now());
        Some(delay)
    }
}

impl Backoff for Reconnect {
    fn reset(&mut self) {
        if self
            .last_failure
            .is_none_or(|at| at.elapsed() >= Self::QUIET)
        {
            self.failures = 0;
        }
    }
}

fn jitter() -> f64 {
    f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX)
}

/// Errors after which resuming from the same resourceVersion cannot work (see the module).
pub fn needs_relist(error: &watcher::Error) -> bool {
    let too_large = |status: &kube::core::Status| {
        status.code == 504
            && (status.message.contains("Too large resource version")
                || status.details.as_ref().is_some_and(|d| {
                    d.causes
                        .iter()
                        .any(|c| c.reason == "ResourceVersionTooLarge")
                }))
    };
    match error {
        watcher::Error::WatchError(status) => too_large(status),
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => {
            status.code == 410 || too_large(status)
        }
        _ => false,
    }
}

/// The events of `api` under `config`, for ever: `Init`, `InitApply`…, `InitDone` for every
/// (re)list, then `Apply` and `Delete`. `what` names the watched kind in the log ("CSR").
pub fn events<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> impl Stream<Item = watcher::Event<K>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone + Eq + std::hash::Hash,
{
    type Inner<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;
    let start = move || -> Inner<K> {
        watcher(api.clone(), config.clone())
            .backoff(Reconnect::new())
            .boxed()
    };
    futures::stream::unfold(
        (None::<Inner<K>>, start),
        move |(current, start)| async move {
            let mut stream = current.unwrap_or_else(&start);
            loop {
                match stream.next().await {
                    Some(Ok(event)) => return Some((event, (Some(stream), start))),
                    Some(Err(error)) if needs_relist(&error) => {
                        // kube-runtime would resume from the same resourceVersion for ever;
                        // client-go relists here, and so do we.
                        tracing::warn!(%error, watch = what, "the API server cannot resume the {what} watch from where it was; relisting");
                        stream = start();
                    }
                    Some(Err(error)) => {
                        tracing::info!(%error, watch = what, "{what} watch interrupted; resuming");
                    }
                    None => stream = start(),
                }
            }
        },
    )
}
