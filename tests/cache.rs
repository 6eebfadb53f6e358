//! What the watch caches (src/controller/watch.rs): CSRs of ours with work left, less
//! managedFields and the `kubectl apply` copy; finished and foreign CSRs not at all.

use csr_warden::controller::watch::{trim_for_cache, worth_caching};
use csr_warden::csr::{CsrState, csr_state};
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
        assert!(waiting.metadata.annotations.is_none());
        assert_eq!(waiting.metadata.resource_version.as_deref(), Some("42"));
    }
}
