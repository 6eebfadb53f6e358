//! The client csr-warden talks to the API server with: kube-client's own layers (base URI,
//! credentials that follow a rotated token file, extra headers) over a connector that holds at
//! most [`MAX_CONNECTIONS`] connections open at once, whatever the number of workers, watches
//! and retries, and however fast or slow the server answers.
//!
//! kube-client speaks HTTP/1.1 here, one connection per request in flight, and its pool opens a
//! new connection whenever no idle one is at hand, so a burst against a fast server can open
//! more connections than there are requests in flight (a connection just finished is not back
//! in the pool yet). Bounding the connector bounds the connections by construction: a new one
//! waits for a slot, which a closed connection gives back, and the request meanwhile takes the
//! first connection that goes idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{BoxError, Service, ServiceBuilder};

/// Connections held to the API server at most: the request limit
/// ([`crate::kube::request::MAX_IN_FLIGHT`]) plus the long-lived watches (CSRs, Nodes, Service and
/// EndpointSlices) and the Lease, with room to spare.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a connection may take to open (as kube-client's default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the kubeconfig's credentials cannot be used: {0}")]
    Credentials(#[source] kube::Error),
    #[error("the kubeconfig's TLS settings cannot be used: {0}")]
    Tls(#[source] kube::Error),
    #[error("building the default client failed: {0}")]
    Default(#[source] kube::Error),
}

/// A kube client whose connections to the API server never exceed [`MAX_CONNECTIONS`]. A
/// proxy in the kubeconfig gets kube-client's own stack (which knows proxies), unbounded, and
/// a warning saying so.
pub fn bounded(config: kube::Config) -> Result<kube::Client, ClientError> {
    if config.proxy_url.is_some() {
        tracing::warn!(
            "the kubeconfig names a proxy: using kube-client's own connection pool, without csr-warden's bound on connections"
        );
        return kube::Client::try_from(config).map_err(ClientError::Default);
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)));
    tcp.set_nodelay(true);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let https = config
        .rustls_https_connector_with_connector(Bounded { inner: tcp, slots })
        .map_err(ClientError::Tls)?;
    // Read and write deadlines on every connection, as kube-client's own stack has: a request
    // with no deadline of ours (the Lease's) cannot hang on a half-open connection.
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    let pool: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(ClientError::Credentials)?)
        .layer(
            config
                .extra_headers_layer()
                .map_err(ClientError::Credentials)?,
        )
        .map_err(BoxError::from)
        .service(pool);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A connector that opens a connection only with a free slot, held until the connection closes.
#[derive(Clone)]
struct Bounded<C> {
    inner: C,
    slots: Arc<Semaphore>,
}

impl<C> Service<http::Uri> for Bounded<C>
where
    C: Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    type Response = Slotted<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        // The ready instance makes the call (tower's contract); a clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slots = self.slots.clone();
        Box::pin(async move {
            let slot = slots.acquire_owned().await?;
            let io = inner.call(uri).await.map_err(Into::into)?;
            Ok(Slotted { io, _slot: slot })
        })
    }
}

/// A connection and the slot it holds.
struct Slotted<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: Connection> Connection for Slotted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for Slotted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Slotted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
