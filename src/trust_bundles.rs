//! Trust distribution: each signer csr-warden signs for with `trustBundle: true` (a CSR signer
//! that signs, or a pod-certificate signer) has its CA published as a ClusterTrustBundle
//! (`certificates.k8s.io/v1beta1`), named `<signer with / as :>:csr-warden`, with
//! `spec.signerName` set and the label `app.kubernetes.io/managed-by: csr-warden`, so pods can
//! trust it through a `clusterTrustBundle` projected volume.
//!
//! Across a CA rotation the old anchor stays published beside the new one for the signer's
//! longest certificate lifetime after it was retired (so every certificate it issued stays
//! trusted until it expires), or until it expires itself, whichever is first; the time it was
//! retired is kept in an annotation on the bundle. csr-warden never touches a bundle it did not
//! create (one without its label), and deletes its own only for a signer of its policy that is
//! no longer published (a signer it does not know may be another installation's). To drop a
//! compromised CA at once, delete the bundle: it is published again with the current CA only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::kube::discovery::wait_until_served;
use crate::kube::request::{REQUEST_TIMEOUT, within};
use crate::ops::live::Live;
use crate::ops::metrics::SignerLabels;
use crate::x509::ca::fingerprint_sha256;
use crate::x509::issue::pem_certificate;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = crate::CONTROLLER_NAME;
const NAME_SUFFIX: &str = crate::CONTROLLER_NAME;
/// Annotation prefix: `<prefix><16 hex of the anchor's SHA-256>` = when it stopped being current.
const RETIRED_PREFIX: &str = "csr-warden.io/retired-";
/// How often the bundles are compared with the CAs (besides every reload).
const INTERVAL: Duration = Duration::from_secs(60);

/// The ClusterTrustBundle name for `signer`: the API requires the signer name, `/` as `:`, as
/// its prefix.
pub fn bundle_name(signer: &str) -> String {
    format!("{}:{NAME_SUFFIX}", signer.replace('/', ":"))
}

/// One anchor in a bundle: its DER, and when it was retired (None: it is the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub der: Vec<u8>,
    pub retired_at: Option<OffsetDateTime>,
}

fn short_id(der: &[u8]) -> String {
    fingerprint_sha256(der)
        .replace(':', "")
        .to_lowercase()
        .chars()
        .take(16)
        .collect()
}

fn not_after(der: &[u8]) -> Option<OffsetDateTime> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// PURE: the anchors to publish now, from the current one and those published before (with
/// their retirement times from the annotations): the current one first, then each earlier one
/// still within `overlap` of its retirement and not expired.
pub fn anchors_to_publish(
    current: &[u8],
    published: &[Vec<u8>],
    retired: &BTreeMap<String, OffsetDateTime>,
    now: OffsetDateTime,
    overlap: time::Duration,
) -> Vec<Anchor> {
    let mut anchors = vec![Anchor {
        der: current.to_vec(),
        retired_at: None,
    }];
    for der in published {
        if der.as_slice() == current || anchors.iter().any(|a| a.der == *der) {
            continue;
        }
        let retired_at = retired.get(&short_id(der)).copied().unwrap_or(now);
        let expired = not_after(der).is_none_or(|end| end <= now);
        if !expired && retired_at + overlap > now {
            anchors.push(Anchor {
                der: der.clone(),
                retired_at: Some(retired_at),
            });
        }
    }
    anchors
}

fn published_anchors(bundle: &ClusterTrustBundle) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(bundle.spec.trust_bundle.as_bytes())
        .flatten()
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| pem.contents)
        .collect()
}

fn retired_times(bundle: &ClusterTrustBundle) -> BTreeMap<String, OffsetDateTime> {
    bundle
        .annotations()
        .iter()
        .filter_map(|(key, value)| {
            let id = key.strip_prefix(RETIRED_PREFIX)?;
            Some((id.to_owned(), OffsetDateTime::parse(value, &Rfc3339).ok()?))
        })
        .collect()
}

/// The bundle object for `anchors`.
fn bundle_object(signer: &str, anchors: &[Anchor]) -> Option<ClusterTrustBundle> {
    let mut trust_bundle = String::new();
    for anchor in anchors {
        trust_bundle.push_str(&pem_certificate(&anchor.der).ok()?);
    }
    let annotations: BTreeMap<String, String> = anchors
        .iter()
        .filter_map(|a| {
            let at = a.retired_at?.format(&Rfc3339).ok()?;
            Some((format!("{RETIRED_PREFIX}{}", short_id(&a.der)), at))
        })
        .collect();
    Some(ClusterTrustBundle {
        metadata: ObjectMeta {
            name: Some(bundle_name(signer)),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: ClusterTrustBundleSpec {
            signer_name: Some(signer.to_owned()),
            trust_bundle,
        },
    })
}

fn managed(bundle: &ClusterTrustBundle) -> bool {
    bundle.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// Publish the trust bundles for ever: at start, on every policy or CA reload, and every minute.
/// Only the leader writes. Returns at once when no signer publishes one.
pub async fn run(client: Client, live: Arc<Live>, dry_run: bool) {
    if live
        .policy()
        .trust_bundle_signers(live.default_ca())
        .next()
        .is_none()
    {
        return;
    }
    wait_until_served(&client, "clustertrustbundles", "trust bundles").await;
    let bundles: Api<ClusterTrustBundle> = Api::all(client);
    let mut recheck = live.recheck_events();
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = recheck.changed() => if changed.is_err() { return },
        }
        if live.is_leader() && !dry_run {
            publish_all(&bundles, &live).await;
        }
    }
}

async fn publish_all(bundles: &Api<ClusterTrustBundle>, live: &Live) {
    let policy = live.policy();
    let default_ca = live.default_ca();
    let mut wanted = Vec::new();
    for (signer, _) in policy.trust_bundle_signers(default_ca) {
        wanted.push(bundle_name(signer));
        let ca = if policy.pod_signers.contains_key(signer) {
            live.pod_ca_for(signer)
        } else {
            live.ca_for(signer)
        };
        let Ok(ca) = ca.as_ref() else { continue };
        let Some(anchor) = ca.anchor_der() else {
            continue;
        };
        let overlap = time::Duration::seconds(match policy.pod_signers.get(signer) {
            Some(pod) => i64::from(pod.max_expiration_seconds),
            None => i64::from(policy.signing.max_expiration_seconds),
        });
        if let Err(error) = publish(bundles, live, signer, anchor, overlap).await {
            tracing::warn!(%signer, bundle = %bundle_name(signer), %error, "could not publish the trust bundle; will try again");
        }
    }
    // Our own bundles for signers of ours no longer published. A bundle of a signer this policy
    // does not name at all may be another installation's: left alone.
    let ours = |signer: &str| {
        policy.signers.contains_key(signer) || policy.pod_signers.contains_key(signer)
    };
    let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let Ok(list) = within(REQUEST_TIMEOUT, bundles.list(&params)).await else {
        return;
    };
    let stale = list.items.iter().filter(|b| {
        !wanted.contains(&b.name_any()) && b.spec.signer_name.as_deref().is_some_and(ours)
    });
    for stale in stale {
        let name = stale.name_any();
        match within(
            REQUEST_TIMEOUT,
            bundles.delete(&name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(bundle = %name, "trust bundle of a signer no longer published, deleted")
            }
            Err(error) => {
                tracing::warn!(bundle = %name, %error, "could not delete a stale trust bundle")
            }
        }
    }
}

async fn publish(
    bundles: &Api<ClusterTrustBundle>,
    live: &Live,
    signer: &str,
    anchor: &[u8],
    overlap: time::Duration,
) -> Result<(), kube::Error> {
    let name = bundle_name(signer);
    let existing = within(REQUEST_TIMEOUT, bundles.get_opt(&name)).await?;
    if let Some(existing) = &existing
        && !managed(existing)
    {
        tracing::warn!(%signer, bundle = %name, "a ClusterTrustBundle of this name exists without csr-warden's label; left alone, and this signer's CA is not published");
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let (published, retired) = existing
        .as_ref()
        .map(|b| (published_anchors(b), retired_times(b)))
        .unwrap_or_default();
    let anchors = anchors_to_publish(anchor, &published, &retired, now, overlap);
    let Some(mut wanted) = bundle_object(signer, &anchors) else {
        return Ok(());
    };
    let action = match existing {
        Some(existing) => {
            let same = published_anchors(&existing)
                == anchors.iter().map(|a| a.der.clone()).collect::<Vec<_>>()
                && existing.metadata.annotations == wanted.metadata.annotations;
            if same {
                return Ok(());
            }
            wanted.metadata.resource_version = existing.metadata.resource_version.clone();
            within(
                REQUEST_TIMEOUT,
                bundles.replace(&name, &PostParams::default(), &wanted),
            )
            .await?;
            "updated"
        }
        None => {
            within(
                REQUEST_TIMEOUT,
                bundles.create(&PostParams::default(), &wanted),
            )
            .await?;
            "created"
        }
    };
    live.metrics
        .trust_bundle_writes
        .get_or_create(&SignerLabels {
            signer: signer.to_owned(),
        })
        .inc();
    tracing::info!(%signer, bundle = %name, anchors = anchors.len(), action, "trust bundle published");
    Ok(())
}
