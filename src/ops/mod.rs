//! Running csr-warden: the policy and CA in force and their reloads ([`live`]), Prometheus
//! metrics ([`metrics`]), `/healthz`, `/readyz` and `/metrics` ([`http`]), logs ([`telemetry`]).

pub mod http;
pub mod live;
pub mod metrics;
pub mod telemetry;
