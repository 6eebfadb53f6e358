//! The policy file: strict parsing, every problem with its line, safe defaults.

use std::path::Path;

use csr_warden::policy::file::{PolicyError, load_policy, parse_policy};
use csr_warden::policy::{CaPaths, SignerRole, Unmatched};

#[test]
fn the_shipped_example_policy_is_valid() {
    let policy = load_policy(Path::new("examples/policy.yaml")).expect("examples/policy.yaml");
    assert_eq!(policy.signer_names.len(), 3);
    assert_eq!(policy.unmatched, Unmatched::Leave);
    assert_eq!(policy.allow_list.len(), 1);
}

#[test]
fn unknown_keys_are_rejected_naming_the_line() {
    let err = parse_policy("signerNames: [kubernetes.io/kube-apiserver-client]\nkubelet:\n  client: true\n  clinet: false\n", Path::new("p.yaml"))
        .expect_err("typo");
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Parse { .. }));
    assert!(text.contains("line 4") && text.contains("clinet"), "{text}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_line() {
    let text = "\
signerNames: [not-a-signer]
allowList:
  - commonName: jane
    groups: [System:Masters]
  - commonNamePattern: '(['
  - groups: [x]
signing:
  defaultExpirationSeconds: 100
  maxExpirationSeconds: 50
";
    let err = parse_policy(text, Path::new("p.yaml")).expect_err("invalid");
    let PolicyError::Invalid { problems, .. } = &err else {
        panic!("{err}")
    };
    let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [1, 3, 5, 6, 8, 8], "{err}");
    assert!(
        err.to_string().contains("csr-warden policy validate"),
        "says what to do"
    );
}

#[test]
fn an_empty_file_gives_safe_defaults() {
    let policy = parse_policy("{}", Path::new("p.yaml")).expect("defaults");
    assert_eq!(policy.forbidden_groups, ["system:masters"]);
    assert!(policy.allow_list.is_empty());
    assert_eq!(policy.unmatched, Unmatched::Leave);
    assert_eq!(policy.signing.default_expiration_seconds, 86_400);
}

fn problems(text: &str) -> Vec<(u64, String)> {
    match parse_policy(text, Path::new("p.yaml")) {
        Err(PolicyError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| (p.line, p.message)).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn signers_give_each_signer_a_role_and_a_ca() {
    let policy = parse_policy(
        "\
signers:
  - name: kubernetes.io/kubelet-serving
    role: approve
  - name: example.com/team-client
    ca: { cert: /cas/team/tls.crt, key: /cas/team/tls.key }
  - name: example.com/legacy
    role: sign
",
        Path::new("p.yaml"),
    )
    .expect("valid");
    let default = CaPaths {
        cert: "/default/tls.crt".into(),
        key: "/default/tls.key".into(),
        pkcs11: None,
    };
    assert_eq!(
        policy.role("kubernetes.io/kubelet-serving"),
        Some(SignerRole::Approve)
    );
    assert_eq!(
        policy.role("example.com/team-client"),
        Some(SignerRole::ApproveAndSign),
        "the default role"
    );
    assert_eq!(policy.role("example.com/legacy"), Some(SignerRole::Sign));
    assert_eq!(policy.role("kubernetes.io/kube-apiserver-client"), None);
    // An approve-only signer needs no CA; the others their own, else the default.
    assert_eq!(
        policy.ca_for("kubernetes.io/kubelet-serving", &default),
        None
    );
    assert_eq!(
        policy
            .ca_for("example.com/team-client", &default)
            .map(|ca| ca.cert.clone()),
        Some("/cas/team/tls.crt".into())
    );
    assert_eq!(
        policy.ca_for("example.com/legacy", &default),
        Some(&default)
    );
    assert_eq!(policy.cas_needed(&default).len(), 2);
    assert_eq!(policy.signers["example.com/legacy"].line, 6);

    // signerNames keeps meaning approveAndSign with the default CA.
    let old = parse_policy(
        "signerNames: [kubernetes.io/kube-apiserver-client]\n",
        Path::new("p.yaml"),
    )
    .expect("valid");
    assert_eq!(
        old.role("kubernetes.io/kube-apiserver-client"),
        Some(SignerRole::ApproveAndSign)
    );
    assert_eq!(
        old.ca_for("kubernetes.io/kube-apiserver-client", &default),
        Some(&default)
    );
}

#[test]
fn signer_mistakes_are_reported_with_their_lines() {
    let both = problems(
        "\
signerNames:
  - kubernetes.io/kube-apiserver-client
forbiddenGroups: [system:masters]
signers:
  - name: kubernetes.io/kubelet-serving
",
    );
    assert_eq!(both.len(), 1, "{both:?}");
    // A list's line is its first entry's.
    assert_eq!(both[0].0, 5);
    assert!(
        both[0].1.contains("signerNames (line 2)") && both[0].1.contains("signers (line 5)"),
        "names both keys: {both:?}"
    );

    let mistakes = problems(
        "\
signers:
  - name: kubernetes.io/kubelet-serving
    role: approove
  - name: example.com/team
    role: approve
    ca: { cert: a, key: b }
  - name: example.com/team
  - name: not-a-signer
",
    );
    let lines: Vec<u64> = mistakes.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [2, 4, 7, 8], "{mistakes:?}");
    assert!(
        mistakes[0].1.contains("unknown role \"approove\"")
            && mistakes[0].1.contains("approve, sign or approveAndSign"),
        "{mistakes:?}"
    );
    assert!(mistakes[1].1.contains("never signs"), "{mistakes:?}");
    assert!(mistakes[2].1.contains("listed twice"), "{mistakes:?}");
}

#[test]
fn serving_addresses_and_the_cluster_domain_are_checked_with_their_lines() {
    let found = problems(
        "clusterDomain: 'not a domain'\nkubelet:\n  servingAddresses:\n    ipRanges:\n      - 10.0.0.0/24\n      - 10.0.0.1/24\n      - 10.0.0.0/33\n      - nonsense\n    dnsNames:\n      - '[a-z'\n",
    );
    let lines: Vec<u64> = found.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [6, 7, 8, 10, 1], "{found:?}");
    assert!(
        found[0].1.contains("host bits") && found[0].1.contains("10.0.0.0/24"),
        "{found:?}"
    );
    assert!(found[3].1.contains("not a valid regex"), "{found:?}");
    let policy = parse_policy(
        "kubelet:\n  servingAddresses:\n    ipRanges: ['fd00:10::/64']\n    dnsNames: ['w[0-9]+']\n",
        Path::new("p.yaml"),
    )
    .expect("valid");
    assert!(policy.serving_addresses.is_restricted());
    assert_eq!(policy.cluster_domain, "cluster.local");
}
