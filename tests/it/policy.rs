//! Policy rules, each with CSRs built in the test (rcgen) or by `openssl req`.

use crate::support;

use std::path::Path;

use csr_warden::policy::file::parse_policy;
use csr_warden::policy::*;
use csr_warden::x509::inspect::inspect;
use support::*;

fn policy(text: &str) -> Policy {
    parse_policy(text, Path::new("test-policy.yaml")).expect("valid policy")
}

fn default_policy() -> Policy {
    policy(POLICY)
}

fn view(signer: &str, usages: &[&str], username: &str, groups: &[&str], pem: &str) -> CsrView {
    CsrView {
        name: "test".into(),
        signer_name: signer.into(),
        usages: usages.iter().map(|u| u.to_string()).collect(),
        expiration_seconds: Some(3600),
        requester: Requester {
            username: username.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        },
        request: inspect(pem.as_bytes()),
    }
}

/// Decide with `facts`; where they say nothing of the privilege ceiling, the cluster answers
/// no to every check (an ordinary identity), so each test sees the rule it is about.
fn decide_with(csr: &CsrView, facts: &ClusterFacts, policy: &Policy) -> Decision {
    let mut facts = facts.clone();
    if facts.privilege.is_none() {
        facts.privilege = unprivileged().privilege;
    }
    decide(csr, &facts, policy).decision
}

fn reason(decision: &Decision) -> Reason {
    decision.reason()
}

const CLIENT: &[&str] = &["client auth"];
const SERVING: &[&str] = &["digital signature", "server auth"];

// Rule 1 ------------------------------------------------------------------------------------

#[test]
fn other_signers_are_left_alone_even_for_system_masters() {
    let pem = rcgen_csr("agent-smith", &["system:masters"], &[]);
    let decision = decide_with(
        &view("example.com/other", CLIENT, "agent-smith", &[], &pem),
        &ClusterFacts::default(),
        &default_policy(),
    );
    assert!(
        matches!(
            decision,
            Decision::Leave {
                reason: Reason::NotOurSigner,
                ..
            }
        ),
        "{decision:?}"
    );
}

#[test]
fn a_sign_only_signer_is_never_decided_even_when_a_rule_would_approve() {
    let pem = rcgen_csr("jane", &["developers"], &[]);
    let sign_only = policy(
        "signers:\n  - name: example.com/legacy\n    role: sign\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
    );
    let jane = view("example.com/legacy", CLIENT, "jane", &[], &pem);
    let decision = decide_with(&jane, &ClusterFacts::default(), &sign_only);
    assert!(
        matches!(
            decision,
            Decision::Leave {
                reason: Reason::SignOnlySigner,
                ..
            }
        ),
        "{decision:?}"
    );
    assert_eq!(facts_needed(&jane, &sign_only), FactsNeeded::default());
}

// Rule 2 ------------------------------------------------------------------------------------

#[test]
fn garbage_wrong_type_and_extra_blocks_are_invalid_requests() {
    let good = rcgen_csr("jane", &["developers"], &[]);
    let cases = [
        "not pem at all".to_owned(),
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n"
            .to_owned(),
        good.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
        format!("{good}{good}"),
        format!("{good}trailing junk"),
    ];
    for pem in cases {
        let decision = decide_with(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &pem),
            &ClusterFacts::default(),
            &default_policy(),
        );
        assert!(
            matches!(
                decision,
                Decision::Deny {
                    reason: Reason::InvalidRequest,
                    ..
                }
            ),
            "{pem:?} → {decision:?}"
        );
    }
}

#[test]
fn weak_rsa_key_is_denied_weak_key() {
    let dir = tempfile::tempdir().expect("dir");
    let pem = openssl_csr(
        dir.path(),
        "weak",
        KeyKind::Rsa(1024),
        "/CN=jane/O=developers",
        None,
        &[],
    );
    let decision = decide_with(
        &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &pem),
        &ClusterFacts::default(),
        &default_policy(),
    );
    assert_eq!(reason(&decision), Reason::WeakKey);
    assert!(decision.message().contains("1024"), "{decision:?}");
}

#[test]
fn a_signature_that_does_not_match_the_key_is_denied() {
    use base64::Engine;
    let pem = rcgen_csr("jane", &["developers"], &[]);
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents;
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01; // flip a bit of the signature
    let body = base64::engine::general_purpose::STANDARD.encode(&tampered);
    let tampered_pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n");
    let decision = decide_with(
        &view(
            SIGNER_KUBE_APISERVER_CLIENT,
            CLIENT,
            "jane",
            &[],
            &tampered_pem,
        ),
        &ClusterFacts::default(),
        &default_policy(),
    );
    assert_eq!(reason(&decision), Reason::InvalidRequest);
    assert!(decision.message().contains("signature"), "{decision:?}");
}

#[test]
fn short_expiration_unknown_and_duplicate_usages_are_invalid() {
    let pem = rcgen_csr("jane", &["developers"], &[]);
    let mut short = view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &pem);
    short.expiration_seconds = Some(599);
    for csr in [
        short,
        view(
            SIGNER_KUBE_APISERVER_CLIENT,
            &["client auth", "flying"],
            "jane",
            &[],
            &pem,
        ),
        view(
            SIGNER_KUBE_APISERVER_CLIENT,
            &["client auth", "client auth"],
            "jane",
            &[],
            &pem,
        ),
    ] {
        assert_eq!(
            reason(&decide_with(
                &csr,
                &ClusterFacts::default(),
                &default_policy()
            )),
            Reason::InvalidRequest
        );
    }
}

#[test]
fn every_o_value_is_a_group_and_each_must_be_allowed() {
    let dir = tempfile::tempdir().expect("dir");
    let allow = policy("allowList:\n  - commonName: maria\n    groups: [developers, ops, qa]\n");
    // openssl, as the Kubernetes docs do it: -subj "/CN=jbeda/O=app1/O=app2".
    let maria = |name: &str, subject: &str| {
        let pem = openssl_csr(dir.path(), name, KeyKind::P256, subject, None, &[]);
        view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "maria", &[], &pem)
    };
    let two = maria("two", "/CN=maria/O=developers/O=ops");
    assert_eq!(
        two.request.as_ref().expect("parsed").organizations,
        ["developers", "ops"]
    );
    let three = maria("three", "/CN=maria/O=developers/O=ops/O=qa");
    let repeated_ou = maria("ou", "/CN=maria/O=developers/OU=a/OU=b");
    assert_eq!(
        repeated_ou
            .request
            .as_ref()
            .expect("parsed")
            .organizational_units,
        ["a", "b"]
    );
    for csr in [&two, &three, &repeated_ou] {
        let verdict = decide(csr, &unprivileged(), &allow);
        assert_eq!(
            verdict.decision.reason(),
            Reason::AutoApprovedAllowList,
            "{verdict:?}"
        );
    }
    // check and the log show every group.
    let steps = decide(&three, &ClusterFacts::default(), &allow).steps;
    assert!(
        steps
            .iter()
            .any(|s| s.detail.contains("O=developers,O=ops,O=qa")),
        "{steps:?}"
    );

    let outsider = decide_with(
        &maria("finance", "/CN=maria/O=developers/O=finance"),
        &ClusterFacts::default(),
        &allow,
    );
    assert_eq!(reason(&outsider), Reason::DisallowedGroups);
    assert!(outsider.message().contains("O=finance"), "{outsider:?}");

    for (name, subject) in [
        ("masters-last", "/CN=maria/O=developers/O=SYSTEM:Masters"),
        ("masters-first", "/CN=maria/O=system:masters/O=developers"),
    ] {
        assert_eq!(
            reason(&decide_with(
                &maria(name, subject),
                &ClusterFacts::default(),
                &allow
            )),
            Reason::ForbiddenGroup,
            "{subject}"
        );
    }
}

// Rule 3 ------------------------------------------------------------------------------------

#[test]
fn system_masters_is_denied_whoever_asks_and_whatever_the_signer() {
    let pem = rcgen_csr("agent-smith", &["system:masters"], &[]);
    for (signer, usages) in [
        (SIGNER_KUBE_APISERVER_CLIENT, CLIENT),
        (SIGNER_KUBELET_CLIENT, CLIENT),
        (SIGNER_KUBELET_SERVING, SERVING),
    ] {
        let decision = decide_with(
            &view(
                signer,
                usages,
                "kubernetes-admin",
                &["system:masters"],
                &pem,
            ),
            &ClusterFacts::default(),
            &default_policy(),
        );
        assert_eq!(reason(&decision), Reason::ForbiddenGroup, "{signer}");
        assert!(decision.message().contains("system:masters"));
        assert!(decision.message().contains("unrestricted"));
    }
}

#[test]
fn look_alikes_of_system_masters_are_denied_too() {
    for lookalike in [
        "System:Masters",
        " system:masters",
        "system:masters ",
        "SYSTEM:MASTERS",
        "system:\u{200B}masters",
    ] {
        let pem = rcgen_csr("agent-smith", &[lookalike], &[]);
        let decision = decide_with(
            &view(
                SIGNER_KUBE_APISERVER_CLIENT,
                CLIENT,
                "agent-smith",
                &[],
                &pem,
            ),
            &ClusterFacts::default(),
            &default_policy(),
        );
        assert_eq!(reason(&decision), Reason::ForbiddenGroup, "{lookalike:?}");
    }
}

#[test]
fn system_masters_stays_forbidden_when_the_policy_leaves_it_out() {
    let custom = policy(
        "forbiddenGroups: [cluster-admins]\nallowList:\n  - commonName: jane\n    groups: [developers]\n",
    );
    assert!(
        custom
            .forbidden_groups
            .contains(&"system:masters".to_owned())
    );
    for group in ["system:masters", "cluster-admins"] {
        let pem = rcgen_csr("jane", &[group], &[]);
        let decision = decide_with(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &pem),
            &ClusterFacts::default(),
            &custom,
        );
        assert_eq!(reason(&decision), Reason::ForbiddenGroup, "{group}");
    }
}

#[test]
fn openssl_made_agent_smith_is_denied() {
    let dir = tempfile::tempdir().expect("dir");
    let pem = openssl_csr(
        dir.path(),
        "smith",
        KeyKind::Rsa(2048),
        "/CN=agent-smith/O=system:masters",
        None,
        &[],
    );
    let verdict = decide(
        &view(
            SIGNER_KUBE_APISERVER_CLIENT,
            CLIENT,
            "agent-smith",
            &[],
            &pem,
        ),
        &ClusterFacts::default(),
        &default_policy(),
    );
    assert_eq!(verdict.decision.reason(), Reason::ForbiddenGroup);
    assert_eq!(
        verdict.steps.last().map(|s| s.rule),
        Some("forbiddenGroups")
    );
}

// Rule 4 ------------------------------------------------------------------------------------

fn node_client(username: &str, groups: &[&str]) -> CsrView {
    let pem = rcgen_csr("system:node:worker-1", &["system:nodes"], &[]);
    view(
        SIGNER_KUBELET_CLIENT,
        &["digital signature", "key encipherment", "client auth"],
        username,
        groups,
        &pem,
    )
}

#[test]
fn kubelet_client_bootstrap_is_approved_when_the_review_allows() {
    let csr = node_client("system:bootstrap:abcdef", &["system:bootstrappers"]);
    let needed = facts_needed(&csr, &default_policy());
    assert!(needed.node_client_review && !needed.self_node_client_review);
    let facts = ClusterFacts {
        node_client_allowed: Some(true),
        ..Default::default()
    };
    assert_eq!(
        reason(&decide_with(&csr, &facts, &default_policy())),
        Reason::AutoApprovedKubeletClient
    );
}

#[test]
fn kubelet_client_renewal_needs_selfnodeclient() {
    let csr = node_client("system:node:worker-1", &["system:nodes"]);
    assert!(facts_needed(&csr, &default_policy()).self_node_client_review);
    let allowed = ClusterFacts {
        node_client_allowed: Some(false),
        self_node_client_allowed: Some(true),
        ..Default::default()
    };
    assert_eq!(
        reason(&decide_with(&csr, &allowed, &default_policy())),
        Reason::AutoApprovedKubeletClient
    );
    // selfnodeclient does not help someone renewing another node's identity
    let other = node_client("system:node:worker-2", &["system:nodes"]);
    let decision = decide_with(&other, &allowed, &default_policy());
    assert!(
        matches!(
            decision,
            Decision::Leave {
                reason: Reason::KubeletClientNotAuthorized,
                ..
            }
        ),
        "{decision:?}"
    );
}

#[test]
fn kubelet_client_without_an_allowing_review_is_left_pending() {
    let csr = node_client("someone", &[]);
    let facts = ClusterFacts {
        node_client_allowed: Some(false),
        ..Default::default()
    };
    assert!(matches!(
        decide_with(&csr, &facts, &default_policy()),
        Decision::Leave {
            reason: Reason::KubeletClientNotAuthorized,
            ..
        }
    ));
    // Offline (no review performed) fails closed too.
    assert!(matches!(
        decide_with(&csr, &ClusterFacts::default(), &default_policy()),
        Decision::Leave { .. }
    ));
}

#[test]
fn kubelet_client_with_the_wrong_shape_is_denied() {
    let allowed = ClusterFacts {
        node_client_allowed: Some(true),
        ..Default::default()
    };
    let cases = [
        (
            rcgen_csr("system:node:worker-1", &["developers"], &[]),
            CLIENT,
            Reason::SubjectMismatch,
        ),
        (
            rcgen_csr("worker-1", &["system:nodes"], &[]),
            CLIENT,
            Reason::SubjectMismatch,
        ),
        (
            rcgen_csr("system:node:worker-1", &["system:nodes"], &[]),
            &["client auth", "server auth"][..],
            Reason::DisallowedUsages,
        ),
        (
            rcgen_csr("system:node:worker-1", &["system:nodes"], &["worker-1"]),
            CLIENT,
            Reason::DisallowedSANs,
        ),
    ];
    for (pem, usages, expected) in cases {
        let csr = view(
            SIGNER_KUBELET_CLIENT,
            usages,
            "system:bootstrap:x",
            &[],
            &pem,
        );
        let decision = decide_with(&csr, &allowed, &default_policy());
        assert!(
            matches!(&decision, Decision::Deny { reason, .. } if *reason == expected),
            "{decision:?}"
        );
    }
}

// Rule 5 ------------------------------------------------------------------------------------

/// The API server's in-cluster addresses in these tests: the ClusterIP of default/kubernetes
/// and one endpoint.
const API_SERVER_IPS: &[&str] = &["10.96.0.1", "192.0.2.10"];

/// worker-1's Node lists `addresses`; worker-2 lists 10.0.0.12 and worker-2; the API server is
/// at [`API_SERVER_IPS`].
fn node_facts(addresses: &[&str]) -> ClusterFacts {
    ClusterFacts {
        node: Some(NodeLookup::Addresses(
            addresses.iter().map(|a| a.to_string()).collect(),
        )),
        other_nodes: Some(vec![
            AddressClaim {
                node: "worker-2".into(),
                address: "10.0.0.12".into(),
            },
            AddressClaim {
                node: "worker-2".into(),
                address: "worker-2".into(),
            },
        ]),
        api_server: Some(
            API_SERVER_IPS
                .iter()
                .map(|ip| ip.parse().expect("ip"))
                .collect(),
        ),
        ..Default::default()
    }
}

fn serving(sans: &[&str], username: &str) -> CsrView {
    let pem = rcgen_csr("system:node:worker-1", &["system:nodes"], sans);
    view(
        SIGNER_KUBELET_SERVING,
        SERVING,
        username,
        &["system:nodes"],
        &pem,
    )
}

#[test]
fn kubelet_serving_is_approved_when_every_san_is_a_node_address() {
    let csr = serving(
        &[
            "worker-1",
            "Worker-1.example.com",
            "10.0.0.11",
            "2001:db8::11",
        ],
        "system:node:worker-1",
    );
    assert_eq!(
        facts_needed(&csr, &default_policy()).node_name.as_deref(),
        Some("worker-1")
    );
    let facts = node_facts(&[
        "10.0.0.11",
        "worker-1",
        "worker-1.example.com",
        "2001:0db8:0000::0011",
    ]);
    assert_eq!(
        reason(&decide_with(&csr, &facts, &default_policy())),
        Reason::AutoApprovedKubeletServing
    );
}

/// The trust boundary: a node's own Node object says what the node wants it to say, so these
/// are refused whatever it lists. One row per rule: the SAN asked for (worker-1's Node lists it
/// too, as a lying kubelet would make it), and the reason.
#[test]
fn kubelet_serving_never_gets_an_identity_that_is_not_the_nodes_own() {
    let rows: &[(&str, Reason)] = &[
        ("kubernetes", Reason::ApiServerName),
        ("kubernetes.default", Reason::ApiServerName),
        ("kubernetes.default.svc", Reason::ApiServerName),
        ("KUBERNETES.default.svc", Reason::ApiServerName),
        (
            "kubernetes.default.svc.cluster.local",
            Reason::ApiServerName,
        ),
        (
            "kubernetes.default.svc.cluster.local.",
            Reason::ApiServerName,
        ),
        ("kubernetes.default.svc.corp.example", Reason::ApiServerName),
        ("db.payments.svc", Reason::ServiceDomainName),
        ("db.payments.svc.cluster.local", Reason::ServiceDomainName),
        ("10-1-2-3.apps.pod.cluster.local", Reason::ServiceDomainName),
        ("localhost", Reason::LocalhostName),
        ("LocalHost.", Reason::LocalhostName),
        ("10.96.0.1", Reason::ApiServerAddress),
        ("::ffff:10.96.0.1", Reason::ApiServerAddress),
        ("192.0.2.10", Reason::ApiServerAddress),
        ("0.0.0.0", Reason::NonUnicastAddress),
        ("127.0.0.1", Reason::NonUnicastAddress),
        ("::1", Reason::NonUnicastAddress),
        ("169.254.169.254", Reason::NonUnicastAddress),
        ("fe80::1", Reason::NonUnicastAddress),
        ("224.0.0.1", Reason::NonUnicastAddress),
        ("ff02::1", Reason::NonUnicastAddress),
        ("10.0.0.12", Reason::AddressOfAnotherNode),
        ("Worker-2", Reason::AddressOfAnotherNode),
        ("*.example.com", Reason::DisallowedSANs),
        ("10.0.0.99", Reason::NodeAddressMismatch),
        ("worker-3", Reason::NodeAddressMismatch),
    ];
    for (san, expected) in rows {
        // The lying Node lists the SAN (except for the last rows, where nobody does).
        let listed: Vec<&str> = if matches!(expected, Reason::NodeAddressMismatch) {
            vec!["10.0.0.11", "worker-1"]
        } else {
            vec!["10.0.0.11", "worker-1", san]
        };
        let verdict = decide(
            &serving(&["worker-1", san], "system:node:worker-1"),
            &node_facts(&listed),
            &default_policy(),
        );
        assert_eq!(
            reason(&verdict.decision),
            *expected,
            "{san}: {:?}",
            verdict.decision
        );
        assert!(matches!(verdict.decision, Decision::Deny { .. }), "{san}");
        assert!(
            verdict
                .decision
                .message()
                .to_lowercase()
                .contains(&san.to_lowercase())
                || verdict.decision.message().contains("10.96.0.1"),
            "{san}: the message names the SAN: {}",
            verdict.decision.message()
        );
    }
}

#[test]
fn kubelet_serving_rules_all_show_in_the_trace_of_an_approval() {
    let verdict = decide(
        &serving(&["worker-1", "10.0.0.11"], "system:node:worker-1"),
        &node_facts(&["10.0.0.11", "worker-1"]),
        &default_policy(),
    );
    assert_eq!(
        reason(&verdict.decision),
        Reason::AutoApprovedKubeletServing
    );
    let rules: Vec<&str> = verdict.steps.iter().map(|s| s.rule).collect();
    for rule in [
        "serving: requester is the node",
        "serving: usages and SAN kinds",
        "serving: reserved names and addresses",
        "serving: kubelet.servingAddresses",
        "serving: API server addresses",
        "serving: the Node's addresses",
        "serving: other Nodes' addresses",
        "kubelet serving",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
}

#[test]
fn kubelet_serving_needs_a_requester_in_system_nodes() {
    let pem = rcgen_csr("system:node:worker-1", &["system:nodes"], &["worker-1"]);
    let not_a_node = view(
        SIGNER_KUBELET_SERVING,
        SERVING,
        "system:node:worker-1",
        &["system:authenticated"],
        &pem,
    );
    let decision = decide_with(&not_a_node, &node_facts(&["worker-1"]), &default_policy());
    assert_eq!(reason(&decision), Reason::SubjectMismatch);
    assert!(decision.message().contains("system:nodes"), "{decision:?}");
}

#[test]
fn kubelet_serving_waits_for_facts_it_does_not_have_and_for_a_node_without_addresses() {
    let csr = serving(&["worker-1"], "system:node:worker-1");
    let policy = default_policy();
    let full = node_facts(&["worker-1"]);
    let rows: Vec<(&str, ClusterFacts, Reason)> = vec![
        (
            "API server addresses unknown",
            ClusterFacts {
                api_server: None,
                ..full.clone()
            },
            Reason::NodeFactsUnavailable,
        ),
        (
            "other Nodes unknown",
            ClusterFacts {
                other_nodes: None,
                ..full.clone()
            },
            Reason::NodeFactsUnavailable,
        ),
        (
            "Node not looked up",
            ClusterFacts {
                node: None,
                ..full.clone()
            },
            Reason::NodeFactsUnavailable,
        ),
        (
            "Node without addresses",
            ClusterFacts {
                node: Some(NodeLookup::Addresses(Vec::new())),
                ..full.clone()
            },
            Reason::NodeAddressesPending,
        ),
    ];
    for (what, facts, expected) in rows {
        let decision = decide_with(&csr, &facts, &policy);
        assert!(
            matches!(decision, Decision::Leave { .. }),
            "{what}: {decision:?}"
        );
        assert_eq!(reason(&decision), expected, "{what}");
    }
    // Reserved names are refused before any fact is needed.
    let decision = decide_with(
        &serving(&["kubernetes.default.svc"], "system:node:worker-1"),
        &ClusterFacts::default(),
        &policy,
    );
    assert_eq!(reason(&decision), Reason::ApiServerName);
}

#[test]
fn kubelet_serving_addresses_from_the_policy_restrict_every_san() {
    let restricted = policy(&POLICY.replace(
        "kubelet: { client: true, serving: true }",
        r#"clusterDomain: corp.internal
kubelet:
  serving: true
  servingAddresses:
    ipRanges: [10.0.0.0/24, 'fd00:10::/64']
    dnsNames: ['[a-z0-9-]+\.nodes\.example\.com', 'worker-[0-9]+']"#,
    ));
    let facts = |listed: &[&str]| node_facts(listed);
    let rows: &[(&[&str], Reason)] = &[
        (
            &["worker-1", "10.0.0.11"],
            Reason::AutoApprovedKubeletServing,
        ),
        (
            &["w1.nodes.example.com", "fd00:10::11"],
            Reason::AutoApprovedKubeletServing,
        ),
        (
            &["W1.Nodes.Example.com."],
            Reason::AutoApprovedKubeletServing,
        ),
        (&["10.0.1.11"], Reason::OutsideServingAddresses),
        (&["fd00:11::11"], Reason::OutsideServingAddresses),
        (
            &["w1.nodes.example.com.evil.org"],
            Reason::OutsideServingAddresses,
        ),
        (&["worker-1.evil.org"], Reason::OutsideServingAddresses),
        (&["api.corp.internal"], Reason::ServiceDomainName),
    ];
    for (sans, expected) in rows {
        let mut listed = vec!["10.0.0.11"];
        listed.extend_from_slice(sans);
        let decision = decide_with(
            &serving(sans, "system:node:worker-1"),
            &facts(&listed),
            &restricted,
        );
        assert_eq!(reason(&decision), *expected, "{sans:?}: {decision:?}");
    }
}

#[test]
fn kubelet_serving_checks_requester_usages_and_san_kinds() {
    let facts = node_facts(&["10.0.0.11", "worker-1"]);
    let policy = default_policy();
    assert_eq!(
        reason(&decide_with(
            &serving(&["worker-1"], "system:node:worker-2"),
            &facts,
            &policy
        )),
        Reason::SubjectMismatch
    );
    assert_eq!(
        reason(&decide_with(
            &serving(&[], "system:node:worker-1"),
            &facts,
            &policy
        )),
        Reason::DisallowedSANs
    );
    let mut client_usage = serving(&["worker-1"], "system:node:worker-1");
    client_usage.usages = vec!["client auth".into()];
    assert_eq!(
        reason(&decide_with(&client_usage, &facts, &policy)),
        Reason::DisallowedUsages
    );
    let dir = tempfile::tempdir().expect("dir");
    let pem = openssl_csr(
        dir.path(),
        "email",
        KeyKind::P256,
        "/CN=system:node:worker-1/O=system:nodes",
        Some("DNS:worker-1,email:a@b.c"),
        &[],
    );
    let email = view(
        SIGNER_KUBELET_SERVING,
        SERVING,
        "system:node:worker-1",
        &["system:nodes"],
        &pem,
    );
    assert_eq!(
        reason(&decide_with(&email, &facts, &policy)),
        Reason::DisallowedSANs
    );
    let missing = ClusterFacts {
        node: Some(NodeLookup::Missing),
        ..node_facts(&[])
    };
    assert_eq!(
        reason(&decide_with(
            &serving(&["worker-1"], "system:node:worker-1"),
            &missing,
            &policy
        )),
        Reason::NodeAddressMismatch
    );
}

// Rule 6 ------------------------------------------------------------------------------------

#[test]
fn allow_list_approves_jane_for_herself_only() {
    let pem = rcgen_csr("jane", &["developers"], &[]);
    let policy = default_policy();
    assert_eq!(
        reason(&decide_with(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &pem),
            &ClusterFacts::default(),
            &policy
        )),
        Reason::AutoApprovedAllowList
    );
    let by_bob = decide_with(
        &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "bob", &[], &pem),
        &ClusterFacts::default(),
        &policy,
    );
    assert!(
        matches!(
            by_bob,
            Decision::Deny {
                reason: Reason::RequesterNotAllowed,
                ..
            }
        ),
        "{by_bob:?}"
    );
}

#[test]
fn allow_list_denies_other_groups_usages_and_sans() {
    let policy = default_policy();
    let cases = [
        (
            rcgen_csr("jane", &["admins"], &[]),
            CLIENT,
            Reason::DisallowedGroups,
        ),
        (
            rcgen_csr("jane", &["developers"], &[]),
            &["client auth", "server auth"][..],
            Reason::DisallowedUsages,
        ),
        (
            rcgen_csr("jane", &["developers"], &[]),
            &["digital signature"][..],
            Reason::DisallowedUsages,
        ),
        (
            rcgen_csr("jane", &["developers"], &["jane.example.com"]),
            CLIENT,
            Reason::DisallowedSANs,
        ),
    ];
    for (pem, usages, expected) in cases {
        let decision = decide_with(
            &view(SIGNER_KUBE_APISERVER_CLIENT, usages, "jane", &[], &pem),
            &ClusterFacts::default(),
            &policy,
        );
        assert_eq!(reason(&decision), expected, "{decision:?}");
    }
}

#[test]
fn allow_list_requesters_and_patterns() {
    let policy = policy(
        "allowList:\n  - commonNamePattern: 'ci-[a-z0-9-]+'\n    groups: [ci]\n    requesters:\n      users: [system:serviceaccount:ci:minter]\n      groups: [ci-admins]\n",
    );
    let pem = rcgen_csr("ci-runner-1", &["ci"], &[]);
    for (user, groups) in [
        ("system:serviceaccount:ci:minter", &[][..]),
        ("alice", &["ci-admins"][..]),
        ("ci-runner-1", &[][..]),
    ] {
        let decision = decide_with(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, user, groups, &pem),
            &ClusterFacts::default(),
            &policy,
        );
        assert_eq!(reason(&decision), Reason::AutoApprovedAllowList, "{user}");
    }
    let denied = decide_with(
        &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "mallory", &[], &pem),
        &ClusterFacts::default(),
        &policy,
    );
    assert_eq!(reason(&denied), Reason::RequesterNotAllowed);
    // The pattern is anchored: a prefix match is not enough.
    let evil = rcgen_csr("ci-runner-1; cluster-admin", &["ci"], &[]);
    let unmatched = decide_with(
        &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "mallory", &[], &evil),
        &ClusterFacts::default(),
        &policy,
    );
    assert!(
        matches!(
            unmatched,
            Decision::Leave {
                reason: Reason::NoMatchingRule,
                ..
            }
        ),
        "{unmatched:?}"
    );
}

// Rule 7 ------------------------------------------------------------------------------------

#[test]
fn unmatched_requests_are_left_or_denied_as_the_policy_says() {
    let pem = rcgen_csr("bob", &["ops"], &[]);
    let csr = view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "bob", &[], &pem);
    assert!(matches!(
        decide_with(&csr, &ClusterFacts::default(), &default_policy()),
        Decision::Leave {
            reason: Reason::NoMatchingRule,
            ..
        }
    ));
    let strict = policy("unmatched: deny\n");
    assert!(matches!(
        decide_with(&csr, &ClusterFacts::default(), &strict),
        Decision::Deny {
            reason: Reason::NotAllowListed,
            ..
        }
    ));
}

#[test]
fn disabled_kubelet_rules_fall_through_to_unmatched() {
    let off = policy("kubelet: { client: false, serving: false }\n");
    let csr = node_client("system:bootstrap:x", &[]);
    assert_eq!(facts_needed(&csr, &off), FactsNeeded::default());
    let facts = ClusterFacts {
        node_client_allowed: Some(true),
        ..Default::default()
    };
    assert!(matches!(
        decide_with(&csr, &facts, &off),
        Decision::Leave {
            reason: Reason::NoMatchingRule,
            ..
        }
    ));
}

#[test]
fn signing_refusal_repeats_the_safety_rules_for_hand_approved_requests() {
    let policy = default_policy();
    let smith = view(
        SIGNER_KUBE_APISERVER_CLIENT,
        CLIENT,
        "admin",
        &[],
        &rcgen_csr("agent-smith", &["system:masters"], &[]),
    );
    assert_eq!(
        signing_refusal(&smith, &policy).map(|r| r.0),
        Some(Reason::ForbiddenGroup)
    );
    let bob = view(
        SIGNER_KUBE_APISERVER_CLIENT,
        CLIENT,
        "bob",
        &[],
        &rcgen_csr("bob", &["ops"], &[]),
    );
    assert_eq!(signing_refusal(&bob, &policy), None);
}

// Rule 3: the subject UID ------------------------------------------------------------------

/// kube-apiserver (≥ 1.33) reads the subject's UID attribute as the user's UID: a request that
/// carries one is refused on every signer unless an allow-list rule for its CN names that UID,
/// by the approver and again by the signer (a human may approve it).
#[test]
fn a_subject_uid_is_refused_unless_an_allow_list_rule_names_it() {
    let dir = tempfile::tempdir().expect("dir");
    let with_uid_rule = policy(&POLICY.replace(
        "    groups: [developers]\n",
        "    groups: [developers]\n    uids: [\"1234\"]\n",
    ));
    let csr = |name: &str, subject: &str| {
        openssl_csr(dir.path(), name, KeyKind::P256, subject, None, &[])
    };
    let jane_1234 = csr("jane1234", "/CN=jane/O=developers/UID=1234");
    let jane_9 = csr("jane9", "/CN=jane/O=developers/UID=9");
    let node = csr("node", "/CN=system:node:n1/O=system:nodes/UID=1234");
    let bob = csr("bob", "/CN=bob/UID=1234");
    struct Case<'a> {
        what: &'a str,
        signer: &'a str,
        usages: &'a [&'a str],
        requester: &'a str,
        pem: &'a str,
        policy: &'a Policy,
        decided: Reason,
        refused: Option<Reason>,
    }
    let cases = [
        Case {
            what: "no rule names UIDs",
            signer: SIGNER_KUBE_APISERVER_CLIENT,
            usages: CLIENT,
            requester: "jane",
            pem: &jane_1234,
            policy: &default_policy(),
            decided: Reason::DisallowedUid,
            refused: Some(Reason::DisallowedUid),
        },
        Case {
            what: "the rule names this UID",
            signer: SIGNER_KUBE_APISERVER_CLIENT,
            usages: CLIENT,
            requester: "jane",
            pem: &jane_1234,
            policy: &with_uid_rule,
            decided: Reason::AutoApprovedAllowList,
            refused: None,
        },
        Case {
            what: "the rule names another UID",
            signer: SIGNER_KUBE_APISERVER_CLIENT,
            usages: CLIENT,
            requester: "jane",
            pem: &jane_9,
            policy: &with_uid_rule,
            decided: Reason::DisallowedUid,
            refused: Some(Reason::DisallowedUid),
        },
        Case {
            what: "no rule for the CN (a human would be asked otherwise)",
            signer: SIGNER_KUBE_APISERVER_CLIENT,
            usages: CLIENT,
            requester: "bob",
            pem: &bob,
            policy: &with_uid_rule,
            decided: Reason::DisallowedUid,
            refused: Some(Reason::DisallowedUid),
        },
        Case {
            what: "a kubelet never carries a UID",
            signer: SIGNER_KUBELET_CLIENT,
            usages: &["digital signature", "client auth"],
            requester: "system:node:n1",
            pem: &node,
            policy: &with_uid_rule,
            decided: Reason::DisallowedUid,
            refused: Some(Reason::DisallowedUid),
        },
        Case {
            what: "no UID: the rule approves as before",
            signer: SIGNER_KUBE_APISERVER_CLIENT,
            usages: CLIENT,
            requester: "jane",
            pem: &rcgen_csr("jane", &["developers"], &[]),
            policy: &with_uid_rule,
            decided: Reason::AutoApprovedAllowList,
            refused: None,
        },
    ];
    for Case {
        what,
        signer,
        usages,
        requester,
        pem,
        policy,
        decided,
        refused,
    } in cases
    {
        let csr = view(signer, usages, requester, &[], pem);
        let verdict = decide(&csr, &unprivileged(), policy);
        assert_eq!(verdict.decision.reason(), decided, "{what}: {verdict:?}");
        assert_eq!(
            signing_refusal(&csr, policy).map(|r| r.0),
            refused,
            "{what}: the signer"
        );
        if csr.request.as_ref().is_ok_and(|r| r.uid.is_some()) {
            assert!(
                verdict.steps.iter().any(|s| s.rule == "subject UID"),
                "{what}: the trace shows the UID step: {:?}",
                verdict.steps
            );
        }
    }
    let denied = decide_with(
        &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, "jane", &[], &jane_9),
        &ClusterFacts::default(),
        &default_policy(),
    );
    assert!(
        denied.message().contains("UID=\"9\""),
        "the message names the UID: {}",
        denied.message()
    );
}

/// A rule's acceptChecks serve only the requests that rule approves: a second rule for the same
/// CN, with other requesters, cannot borrow them.
#[test]
fn accept_checks_belong_to_the_rule_that_approves() {
    let policy = policy(
        r#"
allowList:
  - commonName: ci-deployer
    groups: [deployers]
    acceptChecks: [get-secrets]
    requesters: { users: [release-bot] }
  - commonNamePattern: 'ci-.*'
    groups: [deployers]
    requesters: { groups: [ci-runners] }
"#,
    );
    let pem = rcgen_csr("ci-deployer", &["deployers"], &[]);
    let mut facts = unprivileged();
    if let Some(PrivilegeReview::Answered(answers)) = &mut facts.privilege {
        for (name, allowed) in answers.iter_mut() {
            *allowed = name == "get-secrets";
        }
    }
    let by = |user: &str, groups: &[&str]| {
        decide(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, user, groups, &pem),
            &facts,
            &policy,
        )
        .decision
    };
    let release = by("release-bot", &[]);
    assert_eq!(
        reason(&release),
        Reason::AutoApprovedAllowList,
        "{release:?}"
    );
    let ci = by("runner-7", &["ci-runners"]);
    assert_eq!(reason(&ci), Reason::PrivilegedIdentity, "{ci:?}");
    assert!(ci.message().contains("get-secrets"), "{ci:?}");
    // The signer agrees, whoever approved.
    let as_signed = |user: &str, groups: &[&str]| {
        privilege_ceiling(
            &view(SIGNER_KUBE_APISERVER_CLIENT, CLIENT, user, groups, &pem),
            &policy,
            facts.privilege.as_ref(),
        )
    };
    assert!(matches!(as_signed("release-bot", &[]), Ceiling::Clear(_)));
    assert!(matches!(
        as_signed("runner-7", &["ci-runners"]),
        Ceiling::Exceeded { check, .. } if check == "get-secrets"
    ));
}
