//! /healthz (the process is alive) and /readyz (the CSR watch has synced) for kubelet probes.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn route(
    request: Request<Incoming>,
    ready: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match request.uri().path() {
        "/healthz" => respond(StatusCode::OK, "ok\n"),
        "/readyz" if *ready.borrow() => respond(StatusCode::OK, "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "watch not synced yet\n"),
        _ => respond(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Bind first (so a port clash fails start-up), then serve forever.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, ready: watch::Receiver<bool>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "health endpoint accept failed");
                continue;
            }
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| route(request, ready.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
