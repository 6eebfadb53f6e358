//! The policy file: strict parsing, every problem with its line, safe defaults.

use std::path::Path;

use csr_warden::config::{PolicyError, load_policy, parse_policy};
use csr_warden::policy::Unmatched;

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
