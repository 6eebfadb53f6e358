//! A deadline on every request csr-warden makes: a half-open connection or a server that stops
//! answering must not hold a worker (or `check`) for ever while `/readyz` says ready. Watches are
//! not requests here: they have their own server-side timeout and silence detection.

use std::future::Future;
use std::time::Duration;

/// Writes, reads and Events.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// SubjectAccessReviews: a decision waits on them, so they get less.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, or an error saying it got no answer within `limit`.
pub async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(
            format!("the API server gave no answer within {} s", limit.as_secs()).into(),
        )),
    }
}
