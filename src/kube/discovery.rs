//! Whether the API server serves the certificates.k8s.io/v1beta1 kinds (PodCertificateRequests,
//! ClusterTrustBundles): both are off by default in Kubernetes 1.36.

use std::time::Duration;

use kube::Client;

use super::request::{REQUEST_TIMEOUT, within};

/// The group version of PodCertificateRequests and ClusterTrustBundles.
pub const API_GROUP_VERSION: &str = "certificates.k8s.io/v1beta1";

/// How often, while the API is not served, to look again (quietly).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(300);

/// Whether the API server serves `resource` in `certificates.k8s.io/v1beta1`. An error other
/// than "not there" counts as not served now (looked at again later).
pub async fn served(client: &Client, resource: &str) -> bool {
    match within(
        REQUEST_TIMEOUT,
        client.list_api_group_resources(API_GROUP_VERSION),
    )
    .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == resource),
        Err(error) => {
            tracing::debug!(%error, "discovery of {API_GROUP_VERSION} failed");
            false
        }
    }
}

/// Wait until the API server serves `resource`, saying once (with what turns it on) if it does
/// not. Returns when it does; looks again every few minutes, quietly.
pub async fn wait_until_served(client: &Client, resource: &str, what: &str) {
    let mut said = false;
    loop {
        if served(client, resource).await {
            if said {
                tracing::info!(resource, "the API server serves {resource} now: {what} on");
            }
            return;
        }
        if !said {
            tracing::warn!(
                resource,
                "the API server does not serve {API_GROUP_VERSION} {resource}: {what} off, CSRs carry on as before. Kubernetes 1.36 serves them with --feature-gates=PodCertificateRequest=true,ClusterTrustBundle=true --runtime-config={API_GROUP_VERSION}=true"
            );
            said = true;
        }
        tokio::time::sleep(DISCOVERY_INTERVAL).await;
    }
}
