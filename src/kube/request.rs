//! A deadline on every request csr-warden makes: a half-open connection or a server that stops
//! answering must not hold a worker (or `check`) for ever while `/readyz` says ready. Watches are
//! not requests here: they have their own server-side timeout and silence detection.

use std::future::Future;
use std::time::Duration;

/// Writes, reads and Events.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// SubjectAccessReviews: a decision waits on them, so they get less.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests csr-warden has in flight at once, whatever the number of workers and however fast
/// the server: kube-client speaks HTTP/1.1, one connection per request in flight, so this
/// (plus the few long-lived watches and the Lease) bounds the connections held to the API
/// server by construction.
pub const MAX_IN_FLIGHT: usize = 10;

static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_IN_FLIGHT);

/// `request`, or an error saying it got no answer within `limit`; at most [`MAX_IN_FLIGHT`] at
/// once (waiting for a turn counts against the limit too).
pub async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let bounded = async {
        let _turn = IN_FLIGHT.acquire().await;
        request.await
    };
    match tokio::time::timeout(limit, bounded).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(
            format!("the API server gave no answer within {} s", limit.as_secs()).into(),
        )),
    }
}

/// Objects per page of a list: a 50,000-CSR cluster is listed in pieces, none held whole.
pub const PAGE_SIZE: u32 = 500;

/// Every object `params` selects, one page of [`PAGE_SIZE`] at a time, each page handed to
/// `page` as it arrives; each page request has [`REQUEST_TIMEOUT`] and its turn in flight.
pub async fn list_paged<K>(
    api: &kube::Api<K>,
    params: kube::api::ListParams,
    page: impl FnMut(Vec<K>),
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    paged(
        params,
        |params| async move { api.list(&params).await },
        page,
    )
    .await
}

/// [`list_paged`], metadata only (`as=PartialObjectMetadataList`): a name and a
/// resourceVersion are what a comparison with the cache needs, and a page of them is a fraction
/// of a page of whole objects to encode, send and decode.
pub async fn list_metadata_paged<K>(
    api: &kube::Api<K>,
    params: kube::api::ListParams,
    page: impl FnMut(Vec<kube::core::PartialObjectMeta<K>>),
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    paged(
        params,
        |params| async move { api.list_metadata(&params).await },
        page,
    )
    .await
}

async fn paged<T, Page>(
    params: kube::api::ListParams,
    fetch: impl Fn(kube::api::ListParams) -> Page,
    mut page: impl FnMut(Vec<T>),
) -> Result<(), kube::Error>
where
    T: Clone,
    Page: Future<Output = Result<kube::core::ObjectList<T>, kube::Error>>,
{
    let mut params = params.limit(PAGE_SIZE);
    loop {
        let list = within(REQUEST_TIMEOUT, fetch(params.clone())).await?;
        page(list.items);
        match list.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(()),
        }
    }
}

/// The API server could not be reached, or answered that it cannot serve now (429, 5xx:
/// starting up, overloaded, etcd away): a failure that says nothing about the object asked about.
pub fn is_unavailable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

/// Whether the API server answers `/readyz` with 200 now (within a short deadline): what the
/// workers' retry asks before retrying what failed for want of it.
pub async fn ready(client: &kube::Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.request_text(request)).await,
        Ok(Ok(_))
    )
}
