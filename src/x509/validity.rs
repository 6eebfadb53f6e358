//! A certificate's times, one rule for CSRs and pod certificates alike.

use time::{Duration, OffsetDateTime};

/// What a signer issues by default and at most, in seconds (a CSR's expirationSeconds is
/// clamped to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningLimits {
    pub default_expiration_seconds: u32,
    pub max_expiration_seconds: u32,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Window {
    /// The whole window, backdate included.
    pub fn length(&self) -> Duration {
        self.not_after - self.not_before
    }
}

/// The certificate starts `backdate` before `now`, so clocks that lag a little accept it, and
/// its whole window, backdate included, is at most `lifetime` (the lifetime granted is what a
/// relying party can be exposed to, as kube-controller-manager keeps it: notAfter = notBefore +
/// TTL); never past the CA's own notAfter.
pub fn window(
    lifetime: Duration,
    backdate: Duration,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
) -> Window {
    let not_before = now - backdate;
    Window {
        not_before,
        not_after: (not_before + lifetime).min(ca_not_after),
    }
}

/// A pod certificate's notBefore must lie within 5 minutes of the API server's clock: backdate
/// by less.
pub const POD_BACKDATE: Duration = Duration::minutes(1);
/// The shortest pod certificate the API accepts.
pub const POD_MIN_LIFETIME_SECONDS: i64 = 3600;
/// beginRefreshAt is at least this far from both ends of the validity.
const REFRESH_MARGIN: Duration = Duration::minutes(10);

/// What a pod certificate's times are: notBefore a minute ago, notAfter at most the lifetime
/// later and never past the CA, and the kubelet asked to refresh two-thirds of the way through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodValidity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub begin_refresh_at: OffsetDateTime,
}

/// None when the CA expires too soon for the shortest certificate the API accepts.
pub fn pod_validity(
    max_lifetime_seconds: i64,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
) -> Option<PodValidity> {
    let Window {
        not_before,
        not_after,
    } = window(
        Duration::seconds(max_lifetime_seconds),
        POD_BACKDATE,
        now,
        ca_not_after,
    );
    let lifetime = not_after - not_before;
    if lifetime < Duration::seconds(POD_MIN_LIFETIME_SECONDS) {
        return None;
    }
    let begin_refresh_at = (not_before + Duration::seconds(lifetime.whole_seconds() * 2 / 3))
        .max(not_before + REFRESH_MARGIN)
        .min(not_after - REFRESH_MARGIN);
    Some(PodValidity {
        not_before,
        not_after,
        begin_refresh_at,
    })
}
