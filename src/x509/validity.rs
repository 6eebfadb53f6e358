//! A certificate's times, one rule for CSRs and pod certificates alike.

use time::{Duration, OffsetDateTime};

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
