//! /healthz (the process is alive), /readyz (watch synced, CA loaded, leadership known) and
//! /metrics (Prometheus text format), on one port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::ops::live::Live;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
const METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn route(
    request: Request<Incoming>,
    live: Arc<Live>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match request.uri().path() {
        "/healthz" => respond(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match live.readiness() {
            Ok(()) => respond(StatusCode::OK, TEXT, "ready\n".into()),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => respond(StatusCode::OK, METRICS, live.metrics.encode()),
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    })
}

/// Bind first (so a port clash fails start-up), then serve forever.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, live: Arc<Live>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                continue;
            }
        };
        let live = live.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| route(request, live.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
