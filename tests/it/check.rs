//! `csr-warden check` and `policy validate` as a user runs them, on the shipped examples.

use std::process::Command;

fn csr_warden(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_csr-warden"))
        .args(args)
        .output()
        .expect("run csr-warden");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn check_json(object: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "check",
        "--policy",
        "examples/policy.yaml",
        "--csr-object",
        object,
        "--output",
        "json",
    ];
    args.extend(extra);
    let (code, out, err) = csr_warden(&args);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}")),
    )
}

#[test]
fn agent_smith_example_is_denied_and_says_why() {
    let (code, out, _) = csr_warden(&[
        "check",
        "--policy",
        "examples/policy.yaml",
        "--csr-object",
        "examples/agent-smith.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("DENY (ForbiddenGroup)") && out.contains("system:masters"),
        "{out}"
    );
    assert!(out.contains("forbiddenGroups"), "names the rule: {out}");
}

#[test]
fn examples_decide_as_documented() {
    let (code, jane) = check_json("examples/jane.yaml", &["--privilege-matches", "none"]);
    assert_eq!((code, jane["decision"].as_str()), (0, Some("approve")));
    assert_eq!(jane["reason"], "AutoApprovedAllowList");
    let rules: Vec<&str> = jane["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(
        rules,
        [
            "signerName",
            "well-formed request",
            "forbiddenGroups",
            "reserved identities",
            "kubelet client",
            "kubelet serving",
            "privilege ceiling",
            "allowList"
        ]
    );

    // The privilege ceiling, offline: what the cluster would answer comes from a flag, and none
    // given is not guessed.
    let ceiling: [(&[&str], i32, &str); 4] = [
        (&[], 2, "PrivilegeReviewUnavailable"),
        (
            &["--privilege-matches", "cluster-admin"],
            1,
            "PrivilegedIdentity",
        ),
        (
            &["--privilege-matches", "none,get-secrets"],
            1,
            "PrivilegedIdentity",
        ),
        (&["--privilege-matches", "none"], 0, "AutoApprovedAllowList"),
    ];
    for (flags, exit, why) in ceiling {
        let (code, jane) = check_json("examples/jane.yaml", flags);
        assert_eq!(
            (code, jane["reason"].as_str()),
            (exit, Some(why)),
            "{flags:?}"
        );
    }
    let (code, jane) = check_json(
        "examples/jane.yaml",
        &["--privilege-matches", "get-secrets"],
    );
    assert_eq!(code, 1);
    assert!(
        jane["message"]
            .as_str()
            .is_some_and(|m| m.contains("get-secrets") && m.contains("get secrets")),
        "the message names the check: {jane}"
    );
    let (code, _, err) = csr_warden(&[
        "check",
        "--policy",
        "examples/policy.yaml",
        "--csr-object",
        "examples/jane.yaml",
        "--privilege-matches",
        "root",
    ]);
    assert_eq!(code, 3, "an unknown check name is bad input: {err}");
    assert!(
        err.contains("cluster-admin"),
        "lists the known checks: {err}"
    );

    // Offline, the SubjectAccessReview is not done: left pending unless assumed.
    let (code, node) = check_json("examples/kubelet-client.yaml", &[]);
    assert_eq!(
        (code, node["reason"].as_str()),
        (2, Some("KubeletClientNotAuthorized"))
    );
    let (code, _) = check_json(
        "examples/kubelet-client.yaml",
        &["--assume-node-client-allowed"],
    );
    assert_eq!(code, 0);

    // Offline, every fact a serving request needs comes from a flag; one left out is not
    // guessed: the request is left pending.
    let (code, serving) = check_json(
        "examples/kubelet-serving.yaml",
        &["--node-addresses", "10.0.0.11,worker-1"],
    );
    assert_eq!(
        (code, serving["reason"].as_str()),
        (2, Some("NodeFactsUnavailable"))
    );
    let cluster = [
        "--apiserver-addresses",
        "10.96.0.1",
        "--other-node-addresses",
        "worker-2=10.0.0.12,worker-2=worker-2",
    ];
    let with = |node: &str, others: &[&str]| {
        let mut args = vec!["--node-addresses", node];
        args.extend_from_slice(&cluster);
        args.extend_from_slice(others);
        check_json("examples/kubelet-serving.yaml", &args)
    };
    let (code, _) = with("10.0.0.11,worker-1", &[]);
    assert_eq!(code, 0);
    let (code, serving) = with("10.0.0.99,worker-1", &[]);
    assert_eq!(
        (code, serving["reason"].as_str()),
        (1, Some("NodeAddressMismatch"))
    );
    // A flag given twice adds to the first: here worker-2 lists worker-1's IP too.
    let (code, serving) = with(
        "10.0.0.11,worker-1",
        &["--other-node-addresses", "worker-2=10.0.0.11"],
    );
    assert_eq!(
        (code, serving["reason"].as_str()),
        (1, Some("AddressOfAnotherNode"))
    );
    let (code, serving) = with(
        "10.0.0.11,worker-1",
        &["--apiserver-addresses", "10.0.0.11"],
    );
    assert_eq!(
        (code, serving["reason"].as_str()),
        (1, Some("ApiServerAddress"))
    );
}

#[test]
fn bad_input_exits_3_and_policy_validate_reports_lines() {
    let (code, _, err) = csr_warden(&[
        "check",
        "--policy",
        "examples/policy.yaml",
        "--csr-object",
        "Cargo.toml",
    ]);
    assert_eq!(code, 3, "{err}");
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "signerNames: [x]\nunmatched: maybe\n").expect("write");
    let (code, _, err) = csr_warden(&["policy", "validate", bad.to_str().expect("path")]);
    assert_ne!(code, 0);
    assert!(err.contains("line 2"), "{err}");
    let (code, out, _) = csr_warden(&["policy", "validate", "examples/policy.yaml"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_csr-warden"))
        .args([
            "check",
            "--policy",
            "examples/policy.yaml",
            "--csr-object",
            "examples/agent-smith.yaml",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // Close our end at once, as `| head -0` would.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(1),
        "still the deny exit code; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The shipped pod-certificate examples, decided offline: the allowed service account gets its
/// SPIFFE ID (exit 0), the other is denied with the reason (exit 1), and the example policy is
/// valid.
#[test]
fn pod_certificate_examples_are_decided_offline() {
    let policy = "examples/pod-certificates/policy.yaml";
    let (code, out, err) = csr_warden(&["policy", "validate", policy]);
    assert_eq!(code, 0, "{out}{err}");
    for (object, expected_code, decision, reason) in [
        (
            "examples/pod-certificates/pcr-payments-api-7d9f-0.yaml",
            0,
            "issue",
            "Issued",
        ),
        (
            "examples/pod-certificates/pcr-payments-intruder-0.yaml",
            1,
            "deny",
            "ServiceAccountNotAllowed",
        ),
    ] {
        let (code, out, err) = csr_warden(&[
            "check",
            "--policy",
            policy,
            "--pcr-object",
            object,
            "-o",
            "json",
        ]);
        assert_eq!(code, expected_code, "{object}: {out}{err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(report["decision"], decision, "{report}");
        assert_eq!(report["reason"], reason, "{report}");
    }
    let (_, out, _) = csr_warden(&[
        "check",
        "--policy",
        policy,
        "--pcr-object",
        "examples/pod-certificates/pcr-payments-api-7d9f-0.yaml",
    ]);
    assert!(
        out.contains("spiffe://cluster.local/ns/payments/sa/api"),
        "{out}"
    );
}
