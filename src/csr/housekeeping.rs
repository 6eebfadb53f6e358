//! Housekeeping every few seconds: forget what the controller remembered about CSRs that left
//! the cache, and keep the pending-CSR gauges current (operators alert on a growing queue or an
//! old request).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Context, work};
use crate::csr::object::age_seconds;
use crate::ops::live::Live;

/// Forever, every five seconds.
pub(super) async fn keep_house(
    store: Store<CertificateSigningRequest>,
    work: Arc<work::Work>,
    ctx: Arc<Context>,
    live: Arc<Live>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        ctx.forget_left_pending(|name| store.get(&ObjectRef::new(name)).is_some());
        ctx.forget_waiting_for_ca(|name| store.get(&ObjectRef::new(name)).is_some());
        let cached_uids: HashSet<String> = store
            .state()
            .iter()
            .filter_map(|csr| csr.metadata.uid.clone())
            .collect();
        ctx.forget_inspected(|uid| cached_uids.contains(uid));
        let (waiting, _) = work.sizes();
        live.metrics
            .queue_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let waiting: Vec<f64> = store
            .state()
            .iter()
            .filter(|csr| crate::csr::object::wanted(csr, &live))
            .filter_map(|csr| age_seconds(csr))
            .collect();
        live.metrics
            .pending
            .set(i64::try_from(waiting.len()).unwrap_or(i64::MAX));
        let oldest = waiting.iter().copied().fold(0.0_f64, f64::max);
        live.metrics.oldest_pending_age.set(oldest as i64);
    }
}
