//! The kube client csr-warden builds (`src/client.rs`): its connections to the API server stay
//! within the bound however many requests are in flight, and every request still gets through.

use crate::support;

use std::time::Duration;

use csr_warden::kube::client::{MAX_CONNECTIONS, bounded};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use support::*;

async fn client(h: &Harness) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(h.admin_kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    bounded(config).expect("client")
}

fn review(user: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some("nodeclient".into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Four times as many requests as connections, all in flight at once (the server holds each
/// review for a while, as an overloaded authorizer does): every one is answered, over at most
/// `MAX_CONNECTIONS` connections. kube-client's own pool would open one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_within_the_bound_however_many_requests_are_in_flight() {
    let h = harness().await;
    let client = client(&h).await;
    h.server
        .arm(|f| f.slow_reviews = Duration::from_millis(300));
    let reviews: Api<SubjectAccessReview> = Api::all(client);
    let requests = 4 * MAX_CONNECTIONS;
    let answers = futures::future::join_all((0..requests).map(|i| {
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&PostParams::default(), &review(&format!("user-{i}")))
                .await
        }
    }))
    .await;
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(failed.is_empty(), "every request answered: {failed:?}");
    assert_eq!(h.server.reviews_asked(), requests);
    let (most, _) = h.server.connections();
    assert!(
        most <= MAX_CONNECTIONS,
        "{most} connections open at once; the bound is {MAX_CONNECTIONS}"
    );
    assert!(
        most > 1,
        "the requests did run side by side ({most} connection)"
    );
}
