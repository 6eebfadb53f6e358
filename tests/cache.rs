//! What the watch keeps of each CSR (src/controller/watch.rs `trim_for_cache`): everything a CSR
//! with work left needs, and only its identity and state once it is finished or not ours.

use csr_warden::controller::watch::trim_for_cache;
use csr_warden::controller::{CsrState, csr_state};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};

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
fn an_issued_csr_keeps_its_identity_and_state_but_not_its_request_or_certificate() {
    let mut issued = csr(&["Approved"], Some(b"-----BEGIN CERTIFICATE-----..."));
    trim_for_cache(&mut issued, true);
    assert!(issued.spec.request.0.is_empty());
    let status = issued.status.as_ref().expect("status");
    assert!(status.certificate.is_none());
    assert_eq!(csr_state(&issued), CsrState::Issued);
    assert_eq!(issued.metadata.name.as_deref(), Some("jane"));
    assert_eq!(issued.metadata.uid.as_deref(), Some("uid-1"));
    assert_eq!(issued.metadata.resource_version.as_deref(), Some("42"));
    assert_eq!(issued.spec.username.as_deref(), Some("jane"));
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .all(|c| c.message.is_none())
    );
}

#[test]
fn denied_and_failed_csrs_are_trimmed_and_stay_final() {
    for (conditions, state) in [
        (&["Denied"][..], CsrState::Denied),
        (&["Approved", "Failed"][..], CsrState::Failed),
    ] {
        let mut finished = csr(conditions, None);
        trim_for_cache(&mut finished, true);
        assert!(finished.spec.request.0.is_empty());
        assert_eq!(csr_state(&finished), state);
    }
}

#[test]
fn a_csr_with_work_left_keeps_its_request() {
    for (conditions, state) in [
        (&[][..], CsrState::Pending),
        (&["Approved"][..], CsrState::ApprovedUnsigned),
    ] {
        let mut waiting = csr(conditions, None);
        trim_for_cache(&mut waiting, true);
        assert!(!waiting.spec.request.0.is_empty());
        assert_eq!(csr_state(&waiting), state);
        // The second copy kubectl apply leaves is dropped even here.
        assert!(
            waiting
                .metadata
                .annotations
                .as_ref()
                .is_none_or(|a| a.is_empty())
        );
    }
}

#[test]
fn a_foreign_signers_pending_csr_keeps_no_request() {
    let mut foreign = csr(&[], None);
    trim_for_cache(&mut foreign, false);
    assert!(foreign.spec.request.0.is_empty());
}
