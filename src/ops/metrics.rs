//! Prometheus metrics, served at /metrics. Names are the operator's contract: alert on them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub signer: String,
    pub decision: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignerLabels {
    pub signer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub signer: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// "policy" or "ca"
    pub kind: String,
    /// "success" or "failure"
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventDropLabels {
    /// `invalid` (the server refused it; never retried) or `unavailable` (retries ran out).
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrivilegeReviewLabels {
    /// The privilege check's name.
    pub check: String,
    /// `allowed` (the identity may: a refusal), `denied`, or `error` (no answer).
    pub answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub certificates_issued: Family<SignerLabels, Counter>,
    pub issuance_failures: Family<FailureLabels, Counter>,
    pub seconds_to_decision: Histogram,
    pub seconds_to_certificate: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub watch_restarts: Counter,
    pub resyncs: Counter,
    pub resync_recovered: Counter,
    pub requests_inspected: Counter,
    pub queue_waiting: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
    pub ca_not_after: Family<SignerLabels, Gauge<i64>>,
    pub ca_expiring_soon: Family<SignerLabels, Gauge>,
    pub leader: Gauge,
    pub pending: Gauge,
    pub oldest_pending_age: Gauge,
    pub events_dropped: Family<EventDropLabels, Counter>,
    pub events_shed: Counter,
    pub waiting_for_ca: Gauge,
    /// Per signer whose CA key is in a PKCS#11 token: 1 while the token signs, 0 while it is
    /// missing, locked or failing (its requests wait with CAUnavailable).
    pub pkcs11_token_up: Family<SignerLabels, Gauge>,
    /// The privilege ceiling's SubjectAccessReviews asked (not the reused answers), by check and
    /// answer.
    pub privilege_reviews: Family<PrivilegeReviewLabels, Counter>,
    /// PodCertificateRequests decided, by signer, decision (issue, deny, fail) and reason.
    pub pod_certificates: Family<DecisionLabels, Counter>,
    /// ClusterTrustBundles created or updated, by signer.
    pub trust_bundle_writes: Family<SignerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("csr_warden");
        let metrics = Metrics {
            decisions: Family::default(),
            certificates_issued: Family::default(),
            issuance_failures: Family::default(),
            // 10 ms .. ~3 h
            seconds_to_decision: Histogram::new(exponential_buckets(0.01, 3.0, 14)),
            seconds_to_certificate: Histogram::new(exponential_buckets(0.01, 3.0, 14)),
            reconcile_errors: Family::default(),
            watch_restarts: Counter::default(),
            resyncs: Counter::default(),
            resync_recovered: Counter::default(),
            requests_inspected: Counter::default(),
            queue_waiting: Gauge::default(),
            reloads: Family::default(),
            ca_not_after: Family::default(),
            ca_expiring_soon: Family::default(),
            leader: Gauge::default(),
            pending: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            events_dropped: Family::default(),
            events_shed: Counter::default(),
            waiting_for_ca: Gauge::default(),
            pkcs11_token_up: Family::default(),
            privilege_reviews: Family::default(),
            pod_certificates: Family::default(),
            trust_bundle_writes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "CSR decisions by signer, decision and reason",
            metrics.decisions.clone(),
        );
        registry.register(
            "pod_certificates",
            "PodCertificateRequests decided, by signer, decision (issue, deny, fail) and reason",
            metrics.pod_certificates.clone(),
        );
        registry.register(
            "trust_bundle_writes",
            "ClusterTrustBundles created or updated, by signer",
            metrics.trust_bundle_writes.clone(),
        );
        registry.register(
            "certificates_issued",
            "Certificates issued by signer",
            metrics.certificates_issued.clone(),
        );
        registry.register(
            "issuance_failures",
            "Approved CSRs marked Failed, by signer and reason",
            metrics.issuance_failures.clone(),
        );
        registry.register(
            "seconds_to_decision",
            "Time from CSR creation to our approve/deny",
            metrics.seconds_to_decision.clone(),
        );
        registry.register(
            "seconds_to_certificate",
            "Time from CSR creation to the certificate",
            metrics.seconds_to_certificate.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile failures (retried), by kind",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "privilege_reviews",
            "SubjectAccessReviews the privilege ceiling asked, by check and answer (allowed = a refusal)",
            metrics.privilege_reviews.clone(),
        );
        registry.register(
            "watch_restarts",
            "Times the CSR watch restarted (drops, 410 Gone, errors)",
            metrics.watch_restarts.clone(),
        );
        registry.register(
            "resyncs",
            "Fresh lists of every CSR, compared with the watch's cache",
            metrics.resyncs.clone(),
        );
        registry.register(
            "resync_recovered",
            "CSRs needing work that the watch had missed and the resync found (alert if above 0)",
            metrics.resync_recovered.clone(),
        );
        registry.register(
            "requests_inspected",
            "CSR requests parsed and signature-checked (once per CSR, however often it is looked at)",
            metrics.requests_inspected.clone(),
        );
        registry.register(
            "work_queue_csrs",
            "CSRs queued for a worker",
            metrics.queue_waiting.clone(),
        );
        registry.register(
            "reloads",
            "Policy and CA reloads, by kind and result",
            metrics.reloads.clone(),
        );
        registry.register(
            "ca_not_after_timestamp_seconds",
            "When each signing signer's CA expires (Unix time)",
            metrics.ca_not_after.clone(),
        );
        registry.register(
            "ca_expiring_soon",
            "1 when a signing signer's CA expires within 30 days",
            metrics.ca_expiring_soon.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        registry.register(
            "pending_csrs",
            "CSRs for our signers waiting for a decision or a certificate",
            metrics.pending.clone(),
        );
        registry.register(
            "oldest_pending_csr_age_seconds",
            "Age of the oldest such CSR",
            metrics.oldest_pending_age.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not written (the decision stands and is in the log), by cause",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "events_shed",
            "Normal Events (approved, issued) not written because a storm used up the Event budget (the log line has each)",
            metrics.events_shed.clone(),
        );
        registry.register(
            "csrs_waiting_for_ca",
            "Approved CSRs waiting for their signer's CA to load (issued once it does)",
            metrics.waiting_for_ca.clone(),
        );
        registry.register(
            "pkcs11_token_up",
            "1 while a signer's PKCS#11 token signs, 0 while it is missing, locked or failing (its requests wait with CAUnavailable)",
            metrics.pkcs11_token_up.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                kind: kind.into(),
                result: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "could not encode metrics");
        }
        out
    }
}
