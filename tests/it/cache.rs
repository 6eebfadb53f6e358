//! What the watch caches (src/csr/watch.rs, src/csr/object.rs): CSRs of ours with work left, less
//! managedFields and the `kubectl apply` copy; finished and foreign CSRs not at all.

use csr_warden::csr::object::worth_caching;
use csr_warden::csr::object::{CACHE_TRIMMED, CsrState, StatusWrite, csr_state, status_write};
use csr_warden::csr::watch::trim_for_cache;
use csr_warden::policy::SignerRole;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

fn csr(conditions: &[&str], certificate: Option<&[u8]>) -> CertificateSigningRequest {
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: ByteString(b"-----BEGIN CERTIFICATE REQUEST-----...".to_vec()),
            signer_name: "kubernetes.io/kube-apiserver-client".into(),
            username: Some("jane".into()),
            ..Default::default()
        },
        status: Some(CertificateSigningRequestStatus {
            certificate: certificate.map(|c| ByteString(c.to_vec())),
            conditions: Some(
                conditions
                    .iter()
                    .map(|kind| CertificateSigningRequestCondition {
                        type_: (*kind).into(),
                        status: "True".into(),
                        message: Some("a long explanation".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    };
    csr.metadata.name = Some("jane".into());
    csr.metadata.uid = Some("uid-1".into());
    csr.metadata.resource_version = Some("42".into());
    csr.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kubectl-client-side-apply".into()),
        ..Default::default()
    }]);
    csr.metadata.annotations = Some(
        [(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{...the whole object again...}".to_owned(),
        )]
        .into(),
    );
    csr
}

#[test]
fn finished_csrs_are_not_cached_at_all() {
    for (conditions, certificate, state) in [
        (
            &["Approved"][..],
            Some(&b"-----BEGIN CERTIFICATE-----..."[..]),
            CsrState::Issued,
        ),
        (&["Denied"][..], None, CsrState::Denied),
        (&["Approved", "Failed"][..], None, CsrState::Failed),
    ] {
        let finished = csr(conditions, certificate);
        assert_eq!(csr_state(&finished), state);
        assert!(
            !worth_caching(&finished, Some(SignerRole::ApproveAndSign)),
            "{state:?} is never worked again"
        );
    }
}

#[test]
fn a_foreign_signers_csr_is_not_cached() {
    assert!(!worth_caching(&csr(&[], None), None));
    assert!(!worth_caching(&csr(&["Approved"], None), None));
}

#[test]
fn each_role_caches_only_what_it_works_on() {
    let pending = csr(&[], None);
    let approved = csr(&["Approved"], None);
    // approve: decides pending CSRs; another signer issues the approved ones.
    assert!(worth_caching(&pending, Some(SignerRole::Approve)));
    assert!(!worth_caching(&approved, Some(SignerRole::Approve)));
    // sign: never decides; issues what others approved.
    assert!(!worth_caching(&pending, Some(SignerRole::Sign)));
    assert!(worth_caching(&approved, Some(SignerRole::Sign)));
}

#[test]
fn a_csr_of_ours_with_work_left_is_cached_whole_but_for_managed_fields_and_the_apply_copy() {
    for (conditions, state) in [
        (&[][..], CsrState::Pending),
        (&["Approved"][..], CsrState::ApprovedUnsigned),
    ] {
        let mut waiting = csr(conditions, None);
        assert!(worth_caching(&waiting, Some(SignerRole::ApproveAndSign)));
        trim_for_cache(&mut waiting);
        assert!(
            !waiting.spec.request.0.is_empty(),
            "the request is still needed"
        );
        assert_eq!(csr_state(&waiting), state);
        assert!(waiting.metadata.managed_fields.is_none());
        assert_eq!(
            waiting.metadata.annotations,
            Some([(CACHE_TRIMMED.to_owned(), String::new())].into()),
            "the dropped annotation is marked"
        );
        assert_eq!(waiting.metadata.resource_version.as_deref(), Some("42"));
    }
}

/// What goes back to /approval or /status: a whole copy as a PUT (the server's cheapest write,
/// but it takes metadata from the body), a copy the cache dropped the last-applied annotation
/// from as a merge patch of the conditions (and certificate) at its resourceVersion, so the
/// server keeps the annotation.
#[test]
fn a_trimmed_copy_is_written_as_a_patch_and_a_whole_one_as_a_put() {
    let team = || ("team".to_owned(), "payments".to_owned());
    let certificate = Some(&b"-----BEGIN CERTIFICATE-----..."[..]);
    for (last_applied, with_certificate, expected) in [
        (false, false, None),
        (false, true, None),
        (
            true,
            false,
            Some(serde_json::json!({
                "metadata": {"resourceVersion": "42"},
                "status": {"conditions": [
                    {"type": "Approved", "status": "True", "message": "a long explanation"}
                ]},
            })),
        ),
        (
            true,
            true,
            Some(serde_json::json!({
                "metadata": {"resourceVersion": "42"},
                "status": {
                    "conditions": [
                        {"type": "Approved", "status": "True", "message": "a long explanation"}
                    ],
                    "certificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tLi4u",
                },
            })),
        ),
    ] {
        let mut cached = csr(&["Approved"], certificate);
        let annotations = cached.metadata.annotations.get_or_insert_default();
        annotations.insert(team().0, team().1);
        if !last_applied {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        trim_for_cache(&mut cached);
        assert_eq!(
            cached
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("team")),
            Some(&team().1),
            "other annotations stay in the cache"
        );
        let case = format!("last-applied {last_applied}, certificate {with_certificate}");
        match (status_write(&cached, with_certificate), expected) {
            (StatusWrite::Replace, None) => {}
            (StatusWrite::MergePatch(patch), Some(expected)) => {
                assert_eq!(patch, expected, "{case}")
            }
            (write, expected) => panic!("{case}: {write:?}, expected {expected:?}"),
        }
    }
}
