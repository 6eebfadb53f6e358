//! The CSR watch, which keeps the cache and feeds the work queue, and the resync behind it.
//!
//! After an API server restart the resourceVersion our watch resumes from is older than the new
//! watch cache, so the server answers 410 Gone and the watch relists, page by page. kube-runtime's
//! reflector holds a relist's objects aside and swaps them into the cache only when the last
//! page is in (`InitDone`). A CSR created during the outage is therefore in no cache until then:
//! work triggered by the relist's individual objects finds nothing and is dropped (this is how
//! kube-runtime's `Controller` lost about half the CSRs of a restart). So this module queues
//! nothing while a list is under way and queues every cached CSR once it is complete.
//!
//! The cache holds only CSRs of our signers with work left (pending, or approved and unsigned):
//! finished and foreign CSRs are dropped from it as their events arrive.
//!
//! Behind the watch, a periodic resync lists our signers' CSRs fresh from the API server, names
//! and resourceVersions only, and compares them with what the watch delivered (the cache, and
//! [`Finished`] for the CSRs it does not keep). Only a CSR that differs is read whole: one the
//! watch missed with work left is worked, a cached one finished or deleted behind its back is
//! dropped, each counted in `csr_warden_resync_recovered_total` (which should stay 0).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;

use super::sign::Unconfirmed;
use super::work::Work;
use crate::csr::object::{CACHE_TRIMMED, LAST_APPLIED, wanted};
use crate::kube::request::{PAGE_SIZE, REQUEST_TIMEOUT, list_metadata_paged, within};
use crate::ops::live::Live;
use crate::policy::SignerRole;

/// How long the resync lets the watch catch up before it calls a difference a miss.
const RESYNC_GRACE: Duration = Duration::from_secs(2);

/// Our signers' CSRs that the watch delivered with nothing left for us to do (finished, or not
/// for our role) and the cache therefore does not keep: name -> resourceVersion. With the cache
/// it says what the watch last showed of every CSR of our signers, so the resync can list names
/// and resourceVersions only and read whole just the CSRs that changed without the watch saying
/// so. About 150 bytes a CSR (8 MiB at 51,000: BENCHMARKS.md).
#[derive(Default)]
pub struct Finished {
    state: Mutex<FinishedState>,
}

#[derive(Default)]
struct FinishedState {
    current: HashMap<String, String>,
    /// Built by a relist and swapped in once it is complete, as the reflector swaps the cache.
    relisting: Option<HashMap<String, String>>,
}

impl Finished {
    fn lock(&self) -> MutexGuard<'_, FinishedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn relist_started(&self) {
        self.lock().relisting = Some(HashMap::new());
    }

    fn relisted(&self, name: String, resource_version: String) {
        if let Some(relisting) = self.lock().relisting.as_mut() {
            relisting.insert(name, resource_version);
        }
    }

    fn relist_done(&self) {
        let mut state = self.lock();
        if let Some(relisted) = state.relisting.take() {
            state.current = relisted;
        }
    }

    /// A relist is under way: what the watch delivered is being rebuilt.
    fn is_relisting(&self) -> bool {
        self.lock().relisting.is_some()
    }

    fn record(&self, name: String, resource_version: String) {
        self.lock().current.insert(name, resource_version);
    }

    fn forget(&self, name: &str) {
        self.lock().current.remove(name);
    }

    fn resource_version(&self, name: &str) -> Option<String> {
        self.lock().current.get(name).cloned()
    }

    fn snapshot(&self) -> HashMap<String, String> {
        self.lock().current.clone()
    }

    /// Forget what `before` held that a list made since no longer shows and nothing changed
    /// meanwhile: deleted while the watch was not looking (nothing to do for a finished CSR).
    fn prune(&self, before: &HashMap<String, String>, listed: &HashSet<String>) {
        let mut state = self.lock();
        for (name, resource_version) in before {
            if !listed.contains(name) && state.current.get(name) == Some(resource_version) {
                state.current.remove(name);
            }
        }
    }
}

/// One of our signers, whatever its role.
fn ours(csr: &CertificateSigningRequest, live: &Live) -> bool {
    live.policy().role(&csr.spec.signer_name).is_some()
}

/// What a cached CSR need not carry: managedFields (the server keeps its own through a
/// subresource write) and the `kubectl apply` copy of the object, marked as dropped so the
/// copy is never written whole (see [`crate::csr::object::status_write`]).
pub fn trim_for_cache(csr: &mut CertificateSigningRequest) {
    csr.metadata.managed_fields = None;
    if let Some(annotations) = csr.metadata.annotations.as_mut()
        && annotations.remove(LAST_APPLIED).is_some()
    {
        annotations.insert(CACHE_TRIMMED.to_owned(), String::new());
    }
}

/// Watch every CSR forever: keep `writer`'s cache and queue what needs work. Restarts (a
/// relist) when the policy's signers or their roles change, since the cache holds only what the
/// roles in force had work for (an approve-only signer's approved CSRs are not cached, say).
pub async fn watch_forever(
    api: Api<CertificateSigningRequest>,
    mut writer: Writer<CertificateSigningRequest>,
    work: Arc<Work>,
    live: Arc<Live>,
    timeout_seconds: u32,
    mut stale: tokio::sync::mpsc::UnboundedReceiver<Arc<CertificateSigningRequest>>,
    seen: Seen,
) {
    let mut recheck = live.recheck_events();
    let roles_of = |live: &Live| -> Vec<(String, SignerRole)> {
        let policy = live.policy();
        policy
            .signers
            .iter()
            .map(|(name, config)| (name.clone(), config.role))
            .collect()
    };
    let mut signers = roles_of(&live);
    let mut listed_once = false;
    loop {
        // A consistent list (not resourceVersion=0 from a possibly cold watch cache), and a
        // server-side watch timeout that also bounds how long a silent stream is trusted.
        let config = watcher::Config::default()
            .list_semantic(watcher::ListSemantic::MostRecent)
            .page_size(PAGE_SIZE)
            .timeout(timeout_seconds);
        let mut events = std::pin::pin!(crate::kube::watch::events(api.clone(), config, "CSR"));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => {
                        apply(event, &mut writer, &work, &live, &mut listed_once, &seen);
                    }
                    None => break,
                },
                // Cached CSRs the resync found gone or finished: out of the cache.
                Some(csr) = stale.recv() => {
                    work.forget(&csr.name_any());
                    writer.apply_watcher_event(&watcher::Event::Delete((*csr).clone()));
                }
                changed = recheck.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = roles_of(&live);
                    if now != signers {
                        signers = now;
                        tracing::info!(signers = ?signers, "signers or their roles changed; relisting every CSR");
                        break;
                    }
                    work.offer_everything();
                }
            }
        }
    }
}

/// What the watch keeps besides the cache: the certificates not yet confirmed, and the finished
/// CSRs' resourceVersions.
pub struct Seen {
    pub unconfirmed: Arc<Unconfirmed>,
    pub finished: Arc<Finished>,
}

fn apply(
    event: watcher::Event<CertificateSigningRequest>,
    writer: &mut Writer<CertificateSigningRequest>,
    work: &Work,
    live: &Live,
    listed_once: &mut bool,
    seen: &Seen,
) {
    match event {
        watcher::Event::Init => {
            if *listed_once {
                tracing::info!("CSR watch restarted; relisting");
                live.metrics.watch_restarts.inc();
            }
            writer.apply_watcher_event(&watcher::Event::Init);
            seen.finished.relist_started();
        }
        watcher::Event::InitApply(mut csr) => {
            if wanted(&csr, live) {
                trim_for_cache(&mut csr);
                // Held aside by the writer until the list is complete: queue nothing yet.
                writer.apply_watcher_event(&watcher::Event::InitApply(csr));
            } else {
                if ours(&csr, live) {
                    seen.finished
                        .relisted(csr.name_any(), csr.resource_version().unwrap_or_default());
                }
                seen.unconfirmed.settle(&csr, live);
            }
        }
        watcher::Event::InitDone => {
            writer.apply_watcher_event(&watcher::Event::InitDone);
            seen.finished.relist_done();
            if !*listed_once {
                *listed_once = true;
                tracing::info!("watch synced; deciding CSRs");
                live.set_synced();
            }
            // Everything the list brought is in the cache now, and the server answers again:
            // what failed for want of a connection need not sit out its backoff.
            work.offer_everything();
            work.retry_connection_failures_now();
        }
        watcher::Event::Apply(mut csr) if wanted(&csr, live) => {
            seen.finished.forget(&csr.name_any());
            trim_for_cache(&mut csr);
            // Cache first: a worker may take the CSR at once and must find this copy.
            let event = watcher::Event::Apply(csr);
            writer.apply_watcher_event(&event);
            if let watcher::Event::Apply(csr) = &event {
                work.offer(csr);
            }
        }
        // Finished now (or not ours): out of the cache and the queue.
        watcher::Event::Apply(csr) => {
            if ours(&csr, live) {
                seen.finished
                    .record(csr.name_any(), csr.resource_version().unwrap_or_default());
            }
            seen.unconfirmed.settle(&csr, live);
            work.forget(&csr.name_any());
            writer.apply_watcher_event(&watcher::Event::Delete(csr));
        }
        watcher::Event::Delete(csr) => {
            seen.finished.forget(&csr.name_any());
            work.forget(&csr.name_any());
            writer.apply_watcher_event(&watcher::Event::Delete(csr));
        }
    }
}

/// Every `interval`, list our signers' CSRs fresh and put right what the watch missed.
pub async fn resync_forever(
    api: Api<CertificateSigningRequest>,
    store: Store<CertificateSigningRequest>,
    work: Arc<Work>,
    live: Arc<Live>,
    interval: Duration,
    stale: tokio::sync::mpsc::UnboundedSender<Arc<CertificateSigningRequest>>,
    finished: Arc<Finished>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first list is the watch's own.
    ticker.tick().await;
    let known = Known {
        store: &store,
        finished: &finished,
    };
    loop {
        ticker.tick().await;
        if !live.is_leader() || !live.is_synced() {
            continue;
        }
        match resync_once(&api, known, &work, &live, &stale).await {
            Ok(Some(0)) => tracing::debug!("resync: the watch's cache is complete"),
            Ok(Some(recovered)) => {
                tracing::warn!(
                    recovered,
                    "resync found CSRs the watch had missed; they are being handled"
                )
            }
            Ok(None) => tracing::debug!("resync: the watch is relisting; next period"),
            Err(error) => {
                tracing::warn!(%error, "resync could not list CSRs; trying again next period")
            }
        }
    }
}

/// What the watch has shown of our signers' CSRs: the cache (work left) and [`Finished`].
#[derive(Clone, Copy)]
struct Known<'a> {
    store: &'a Store<CertificateSigningRequest>,
    finished: &'a Finished,
}

impl Known<'_> {
    fn cached(&self, name: &str) -> Option<Arc<CertificateSigningRequest>> {
        self.store.get(&ObjectRef::new(name))
    }

    /// The resourceVersion the watch last showed of `name`, if it showed it.
    fn resource_version(&self, name: &str) -> Option<String> {
        self.cached(name)
            .and_then(|csr| csr.resource_version())
            .or_else(|| self.finished.resource_version(name))
    }
}

/// One resync; the number of CSRs it found the watch had missed, or None when it gave way to
/// a relist under way.
async fn resync_once(
    api: &Api<CertificateSigningRequest>,
    known: Known<'_>,
    work: &Work,
    live: &Live,
    stale: &tokio::sync::mpsc::UnboundedSender<Arc<CertificateSigningRequest>>,
) -> Result<Option<usize>, kube::Error> {
    // CSRs whose listed resourceVersion is not the one the watch last showed, with the one it
    // showed at the time; and every CSR listed.
    let mut suspects = Vec::new();
    let mut listed = HashSet::new();
    let finished_before = known.finished.snapshot();
    // Only our signers, each with its own paged list of names and resourceVersions: cheap
    // however many CSRs other signers (or finished ones of ours) there are.
    let signers: Vec<String> = live.policy().signer_names.iter().cloned().collect();
    for signer in signers {
        let params = ListParams::default().fields(&format!("spec.signerName={signer}"));
        list_metadata_paged(api, params, |items| {
            for csr in items {
                let name = csr.name_any();
                let shown = known.resource_version(&name);
                if shown != csr.resource_version() {
                    suspects.push((name.clone(), shown));
                }
                listed.insert(name);
            }
        })
        .await?;
    }
    live.metrics.resyncs.inc();
    known.finished.prune(&finished_before, &listed);
    // Cached, but not listed: deleted while the watch was not looking. Checked one by one
    // below, after the grace.
    let leftovers: Vec<(String, Option<String>)> = known
        .store
        .state()
        .iter()
        .filter(|csr| !listed.contains(&csr.name_any()))
        .map(|csr| (csr.name_any(), csr.resource_version()))
        .collect();
    if suspects.is_empty() && leftovers.is_empty() {
        return Ok(Some(0));
    }
    // A difference may be an event still on its way (or our own write the list predates):
    // give the watch a moment, then look again, one CSR at a time.
    tokio::time::sleep(RESYNC_GRACE).await;
    if known.finished.is_relisting() {
        // The relist brings every CSR anew; comparing with what it is replacing would only
        // read CSRs whole for nothing.
        return Ok(None);
    }
    let mut recovered = 0;
    for (name, shown_then) in suspects {
        if known.resource_version(&name) != shown_then {
            continue; // the watch delivered something for it meanwhile: it is alive
        }
        let Some(fresh) = within(REQUEST_TIMEOUT, api.get_opt(&name)).await? else {
            continue; // deleted since: nothing to do
        };
        if fresh.resource_version() == shown_then {
            continue; // the list was older than the watch
        }
        if wanted(&fresh, live) {
            // Already in hand (queued or being worked): not missed.
            if work.holds(&name) {
                continue;
            }
            recovered += 1;
            live.metrics.resync_recovered.inc();
            tracing::warn!(csr = %name, shown = ?shown_then, server = ?fresh.resource_version(), "the CSR watch missed this CSR; handling it from a fresh read");
            work.offer_fresh(fresh);
            continue;
        }
        // Nothing left to do for it.
        match known.cached(&name) {
            Some(cached) => {
                recovered += 1;
                drop_missed(known, live, stale, cached, Some(&fresh));
            }
            None => {
                known
                    .finished
                    .record(name.clone(), fresh.resource_version().unwrap_or_default());
                tracing::debug!(csr = %name, "the CSR watch missed a change to a CSR with nothing left to do");
            }
        }
    }
    // The cache holds what the server has with work left, nothing more.
    for (name, cached_then) in leftovers {
        let Some(cached) = known.cached(&name) else {
            continue;
        };
        if cached.resource_version() != cached_then {
            continue; // the watch delivered something for it meanwhile
        }
        let fresh = within(REQUEST_TIMEOUT, api.get_opt(&name)).await?;
        if fresh.as_ref().is_some_and(|f| wanted(f, live)) {
            continue;
        }
        recovered += 1;
        drop_missed(known, live, stale, cached, fresh.as_ref());
    }
    Ok(Some(recovered))
}

/// A cached CSR whose deletion or finish (`fresh`, when it still exists) the watch missed: out
/// of the cache (by the watch's task), remembered as finished, counted and logged.
fn drop_missed(
    known: Known<'_>,
    live: &Live,
    stale: &tokio::sync::mpsc::UnboundedSender<Arc<CertificateSigningRequest>>,
    cached: Arc<CertificateSigningRequest>,
    fresh: Option<&CertificateSigningRequest>,
) {
    let name = cached.name_any();
    if let Some(fresh) = fresh {
        known
            .finished
            .record(name.clone(), fresh.resource_version().unwrap_or_default());
    }
    live.metrics.resync_recovered.inc();
    tracing::warn!(csr = %name, "the CSR watch missed that this CSR was deleted or finished; dropping it from the cache");
    let _ = stale.send(cached);
}
