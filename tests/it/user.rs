//! The user's side against the tests' API server, through real kubectl: `kubectl csr-warden
//! request` (a key made here, the CSR followed to its certificate, which then logs in), a
//! pending request (csr-warden's Leave reason shown, exit 4), Ctrl-C, a denied one (exit 2), a
//! request a human approves and another signer issues; and `csr-warden credential` as kubectl's
//! exec plugin (first certificate with the bootstrap context, renewal with the certificate
//! itself, two kubectl processes on an expired cache making one CSR).
//!
//! csr-warden runs as the controller with the cluster CA (as on kubeadm), so the certificates it
//! issues log in to this API server.

use crate::support;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The harness with csr-warden running on the cluster CA, synced.
async fn cluster() -> (Harness, ControllerProcess) {
    let h = harness().await;
    let cluster_ca = h.server.cluster_ca_files(h.dir.path());
    let controller = ControllerProcess::start(&h.server, h.dir.path(), &cluster_ca, &[]);
    controller.wait_synced().await;
    (h, controller)
}

/// PATH with `kubectl-csr_warden` (the binary under the plugin's name) in front.
fn plugin_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    if !bin.exists() {
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_csr-warden"),
            bin.join("kubectl-csr_warden"),
        )
        .expect("symlink");
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `kubectl ARGS` with this kubeconfig, HOME in the test's directory, the plugin on PATH, run
/// in `cwd`, with `env` added.
fn kubectl_command(
    dir: &Path,
    kubeconfig: &Path,
    cwd: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("kubectl");
    command
        .args(args)
        .current_dir(cwd)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir)
        .env("PATH", plugin_path(dir))
        .env("CSR_WARDEN_CACHE_DIR", dir.join("cache"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CSR_WARDEN_RENEW_WHEN_REMAINING")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

async fn kubectl_run(
    dir: &Path,
    kubeconfig: &Path,
    cwd: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Ran {
    let output = kubectl_command(dir, kubeconfig, cwd, env, args)
        .output()
        .await
        .expect("kubectl must be installed");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A fresh, empty working directory.
fn workdir(h: &Harness, name: &str) -> PathBuf {
    let dir = h.dir.path().join(name);
    std::fs::create_dir(&dir).expect("workdir");
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The CSRs whose requester is `user`, oldest first.
fn csrs_by(server: &FakeApiServer, user: &str) -> Vec<Value> {
    let mut csrs: Vec<Value> = server
        .csrs()
        .into_iter()
        .filter(|c| c["spec"]["username"] == user)
        .collect();
    csrs.sort_by_key(|c| {
        c["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse::<u64>().ok())
    });
    csrs
}

fn groups_of(csr: &Value) -> Vec<String> {
    csr["spec"]["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `kubectl auth whoami -o json`: (username, groups).
async fn whoami(
    dir: &Path,
    kubeconfig: &Path,
    env: &[(&str, &str)],
    context: &str,
) -> (String, Vec<String>) {
    let ran = kubectl_run(
        dir,
        kubeconfig,
        dir,
        env,
        &["--context", context, "auth", "whoami", "-o", "json"],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let review: Value = serde_json::from_str(&ran.stdout).expect("whoami json");
    let info = &review["status"]["userInfo"];
    (
        info["username"].as_str().unwrap_or_default().to_owned(),
        info["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_gets_an_allow_listed_user_a_certificate_that_logs_in() {
    let (h, _controller) = cluster().await;
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "jane-token");
    let work = workdir(&h, "work");
    let ran = kubectl_run(
        h.dir.path(),
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--common-name",
            "jane",
            "--group",
            "developers",
            "--expiration",
            "1h",
            "--set-context",
            "jane-cert",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    for progress in [
        "created CSR jane-",
        "approved: AutoApprovedAllowList",
        "issued",
    ] {
        assert!(ran.stderr.contains(progress), "{progress}: {ran}");
    }
    assert_eq!(
        files_in(&work),
        ["jane.crt", "jane.key"],
        "nothing else, no temporary files"
    );
    let key = work.join("jane.key");
    assert_eq!(std::fs::metadata(&key).expect("key").mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&key)
            .expect("key")
            .contains("BEGIN PRIVATE KEY")
    );

    // The CSR asked for what the flags said; the key never went to the server.
    let csrs = csrs_by(&h.server, "jane");
    assert_eq!(csrs.len(), 1, "{csrs:#?}");
    let spec = &csrs[0]["spec"];
    assert_eq!(spec["signerName"], CLIENT_SIGNER);
    assert_eq!(spec["expirationSeconds"], 3600);
    assert_eq!(
        spec["usages"],
        serde_json::json!(["digital signature", "client auth"])
    );
    assert!(!csrs[0].to_string().contains("PRIVATE KEY"));

    // The context it added logs in as jane, in her group, with the certificate.
    let (user, groups) = whoami(h.dir.path(), &kubeconfig, &[], "jane-cert").await;
    assert_eq!(user, "jane");
    assert!(groups.contains(&"developers".to_owned()), "{groups:?}");
    // The bootstrap context is still the current one.
    let (user, groups) = whoami(h.dir.path(), &kubeconfig, &[], "fake").await;
    assert_eq!(user, "jane");
    assert!(
        !groups.contains(&"developers".to_owned()),
        "the token, not the certificate: {groups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_request_says_why_and_what_to_do_and_leaves_no_files() {
    let (h, _controller) = cluster().await;
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "bob-token");
    let work = workdir(&h, "work");
    let ran = kubectl_run(
        h.dir.path(),
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--group",
            "ops",
            "--timeout",
            "15s",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(4), "exit 4: still pending\n{ran}");
    // The CN defaults to who the cluster says bob is.
    assert!(ran.stderr.contains("created CSR bob-"), "{ran}");
    assert!(
        ran.stderr.contains("pending: csr-warden left it for a human: NoMatchingRule: no rule covers subject \"CN=bob,O=ops\""),
        "{ran}"
    );
    let csr = csrs_by(&h.server, "bob")[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    assert!(
        ran.stderr
            .contains(&format!("kubectl certificate approve {csr}")),
        "what an operator would run: {ran}"
    );
    assert!(
        files_in(&work).is_empty(),
        "no key kept: {:?}",
        files_in(&work)
    );

    // Ctrl-C while it waits leaves nothing either.
    let mut child = kubectl_command(
        h.dir.path(),
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--group",
            "ops",
            "--timeout",
            "120s",
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("kubectl");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut seen = String::new();
    let waiting = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("pending: csr-warden left it for a human") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(waiting, Ok(true), "{seen}");
    // kubectl execs the plugin in its own place (same process), as a terminal's Ctrl-C reaches it.
    std::process::Command::new("kill")
        .args(["-INT", &child.id().expect("pid").to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits on Ctrl-C")
        .expect("status");
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted; nothing was written"), "{seen}");
    assert!(files_in(&work).is_empty(), "{:?}", files_in(&work));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_shows_the_reason_and_exits_2() {
    let (h, _controller) = cluster().await;
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "smith-token");
    let work = workdir(&h, "work");
    let ran = kubectl_run(
        h.dir.path(),
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--common-name",
            "agent-smith",
            "--group",
            "system:masters",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("denied: ForbiddenGroup: "), "{ran}");
    assert!(ran.stderr.contains("system:masters"), "{ran}");
    assert!(ran.stderr.contains("a denied CSR is final"), "{ran}");
    assert!(files_in(&work).is_empty(), "{:?}", files_in(&work));
}

/// No csr-warden at all: a human approves, and another signer (kube-controller-manager) issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_when_a_human_approves_and_another_signer_issues() {
    let h = harness().await;
    let admin = h.admin_kubeconfig();
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "jane-token");
    let work = workdir(&h, "work");
    let request = kubectl_command(
        h.dir.path(),
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--common-name",
            "jane",
            "--timeout",
            "120s",
        ],
    )
    .output();
    let request = tokio::spawn(request);
    h.server
        .wait_for("jane's CSR", |s| !csrs_by(s, "jane").is_empty())
        .await;
    let csr = csrs_by(&h.server, "jane").remove(0);
    let name = csr["metadata"]["name"].as_str().expect("name").to_owned();
    let (ok, out, err) = kubectl(&admin, &["certificate", "approve", &name], None);
    assert!(ok, "{out}{err}");
    // kube-controller-manager's signer: the cluster CA signs what the CSR asks.
    let request_pem = {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(csr["spec"]["request"].as_str().expect("request"))
            .expect("base64");
        String::from_utf8(bytes).expect("pem")
    };
    let ca_key = rcgen::KeyPair::from_pem(&h.server.ca_key_pem).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&h.server.ca_pem, ca_key).expect("issuer");
    let params = rcgen::CertificateSigningRequestParams::from_pem(&request_pem).expect("csr");
    let certificate = params.signed_by(&issuer).expect("signed").pem();
    h.server.issue_as_another_signer(&name, &certificate);

    let output = request.await.expect("join").expect("kubectl");
    let ran = Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stderr.contains("approved: KubectlApprove"), "{ran}");
    assert_eq!(files_in(&work), ["jane.crt", "jane.key"]);
    let written = std::fs::read_to_string(work.join("jane.crt")).expect("cert");
    assert_eq!(written, certificate);
}

/// A kubeconfig whose context `jane` runs `csr-warden credential` (written by `request --exec
/// --set-context jane`), bootstrapping with context `fake` (jane's token).
async fn exec_kubeconfig(h: &Harness) -> PathBuf {
    let kubeconfig = h.server.kubeconfig(h.dir.path(), "jane-token");
    let ran = kubectl_run(
        h.dir.path(),
        &kubeconfig,
        h.dir.path(),
        &[],
        &[
            "csr-warden",
            "request",
            "--exec",
            "--context",
            "fake",
            "--common-name",
            "jane",
            "--group",
            "developers",
            "--expiration",
            "1h",
            "--set-context",
            "jane",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        csrs_by(&h.server, "jane").is_empty(),
        "--exec requests nothing itself"
    );
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains("client.authentication.k8s.io/v1"), "{text}");
    assert!(text.contains("--bootstrap-context"), "{text}");
    kubeconfig
}

/// The cache's one entry.
fn cache_entry(h: &Harness) -> PathBuf {
    let cache = h.dir.path().join("cache");
    assert_eq!(
        std::fs::metadata(&cache).expect("cache dir").mode() & 0o777,
        0o700
    );
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .expect("cache")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        std::fs::metadata(&entries[0]).expect("entry").mode() & 0o777,
        0o600
    );
    entries[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_in_through_the_exec_plugin_and_it_renews_with_the_old_certificate() {
    let (h, _controller) = cluster().await;
    let kubeconfig = exec_kubeconfig(&h).await;

    // First use: no certificate yet, requested with the bootstrap context (jane's token).
    let (user, groups) = whoami(h.dir.path(), &kubeconfig, &[], "jane").await;
    assert_eq!(user, "jane");
    assert!(
        groups.contains(&"developers".to_owned()),
        "the certificate's O: {groups:?}"
    );
    let first = csrs_by(&h.server, "jane");
    assert_eq!(first.len(), 1, "{first:#?}");
    assert!(
        !groups_of(&first[0]).contains(&"developers".to_owned()),
        "created with the token: {}",
        first[0]["spec"]
    );
    let entry = cache_entry(&h);
    let cached: Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("read")).expect("json");
    assert_eq!(cached["csr"], first[0]["metadata"]["name"]);

    // Used again while fresh: from the cache, no new CSR.
    whoami(h.dir.path(), &kubeconfig, &[], "jane").await;
    assert_eq!(csrs_by(&h.server, "jane").len(), 1);

    // The token is gone (as an OIDC session ends); with a threshold that makes the certificate
    // due at once, the plugin renews with the certificate itself, and kubectl keeps working.
    h.server.rotate_token("jane-token", "jane-token-revoked");
    let renew_now = [("CSR_WARDEN_RENEW_WHEN_REMAINING", "1")];
    let (user, _) = whoami(h.dir.path(), &kubeconfig, &renew_now, "jane").await;
    assert_eq!(user, "jane");
    let both = csrs_by(&h.server, "jane");
    assert_eq!(both.len(), 2, "{both:#?}");
    let renewal = &both[1];
    assert!(
        groups_of(renewal).contains(&"developers".to_owned()) && renewal["spec"]["uid"] == "",
        "created by the certificate's identity (CN jane, O developers), not the token: {}",
        renewal["spec"]
    );
    assert!(issued(
        &h.server,
        renewal["metadata"]["name"].as_str().expect("name")
    ));
    let cached: Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("read")).expect("json");
    assert_eq!(
        cached["csr"], renewal["metadata"]["name"],
        "the cache holds the renewal"
    );

    // And the renewed certificate serves the next kubectl without asking again.
    let (user, _) = whoami(h.dir.path(), &kubeconfig, &[], "jane").await;
    assert_eq!(user, "jane");
    assert_eq!(csrs_by(&h.server, "jane").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kubectl_processes_on_an_expired_cache_make_one_csr() {
    let (h, _controller) = cluster().await;
    let kubeconfig = exec_kubeconfig(&h).await;
    whoami(h.dir.path(), &kubeconfig, &[], "jane").await;
    assert_eq!(csrs_by(&h.server, "jane").len(), 1);

    // The cached certificate ran out (a laptop closed overnight).
    let entry = cache_entry(&h);
    let mut cached: Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("read")).expect("json");
    let expired = {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jane");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        params.self_signed(&key).expect("cert").pem()
    };
    cached["certificate"] = Value::String(expired);
    std::fs::write(&entry, serde_json::to_vec(&cached).expect("json")).expect("write");

    let args = ["--context", "jane", "auth", "whoami", "-o", "json"];
    let one = kubectl_command(h.dir.path(), &kubeconfig, h.dir.path(), &[], &args).output();
    let two = kubectl_command(h.dir.path(), &kubeconfig, h.dir.path(), &[], &args).output();
    let (one, two) = tokio::join!(one, two);
    for output in [one.expect("kubectl"), two.expect("kubectl")] {
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let review: Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(review["status"]["userInfo"]["username"], "jane");
    }
    let csrs = csrs_by(&h.server, "jane");
    assert_eq!(csrs.len(), 2, "exactly one new CSR: {csrs:#?}");
    assert!(
        !groups_of(&csrs[1]).contains(&"developers".to_owned()),
        "an expired certificate is not used: the bootstrap context asked: {}",
        csrs[1]["spec"]
    );
}

/// An operator removes jane's allow-list entry: her next renewal is left pending. kubectl keeps
/// working with the current certificate and says why; the next use asks about the same CSR
/// instead of making another; once a human approves it, the plugin takes it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_left_pending_keeps_the_current_certificate_and_is_asked_about_again() {
    let h = harness().await;
    let cluster_ca = h.server.cluster_ca_files(h.dir.path());
    let controller = ControllerProcess::start(
        &h.server,
        h.dir.path(),
        &cluster_ca,
        &["--reload-interval-ms", "100"],
    );
    controller.wait_synced().await;
    let kubeconfig = exec_kubeconfig(&h).await;
    whoami(h.dir.path(), &kubeconfig, &[], "jane").await;
    assert_eq!(csrs_by(&h.server, "jane").len(), 1);

    let without_jane = POLICY.replace(
        "allowList:\n  - commonName: jane\n    groups: [developers]\n",
        "allowList: []\n",
    );
    assert_ne!(without_jane, POLICY);
    std::fs::write(h.dir.path().join("policy.yaml"), without_jane).expect("policy");
    controller
        .wait_for_log("the policy without jane reloaded", |l| {
            l["message"] == "policy reloaded"
        })
        .await;

    let args = ["--context", "jane", "auth", "whoami", "-o", "json"];
    let renew = [
        ("CSR_WARDEN_RENEW_WHEN_REMAINING", "1"),
        ("CSR_WARDEN_RENEWAL_WAIT", "8s"),
    ];
    let ran = kubectl_run(h.dir.path(), &kubeconfig, h.dir.path(), &renew, &args).await;
    assert_eq!(ran.code, Some(0), "kubectl keeps working: {ran}");
    let review: Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(review["status"]["userInfo"]["username"], "jane");
    assert!(
        ran.stderr
            .contains("pending: csr-warden left it for a human: NoMatchingRule"),
        "{ran}"
    );
    assert!(
        ran.stderr
            .contains("not issued yet; the current certificate is used meanwhile"),
        "{ran}"
    );
    let csrs = csrs_by(&h.server, "jane");
    assert_eq!(csrs.len(), 2, "{csrs:#?}");
    let renewal = csrs[1]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let entry = cache_entry(&h);
    let cached: Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("read")).expect("json");
    assert_eq!(
        cached["pending"]["csr"],
        renewal.as_str(),
        "{}",
        cached["csr"]
    );

    // Used again: the pending renewal is asked about, not requested anew.
    let quick = [
        ("CSR_WARDEN_RENEW_WHEN_REMAINING", "1"),
        ("CSR_WARDEN_RENEWAL_WAIT", "1s"),
    ];
    let ran = kubectl_run(h.dir.path(), &kubeconfig, h.dir.path(), &quick, &args).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(csrs_by(&h.server, "jane").len(), 2, "no second renewal CSR");

    // A human approves it; csr-warden signs it; the next use takes it up.
    let (ok, out, err) = kubectl(
        &h.admin_kubeconfig(),
        &["certificate", "approve", &renewal],
        None,
    );
    assert!(ok, "{out}{err}");
    h.server
        .wait_for("the renewal issued", |s| issued(s, &renewal))
        .await;
    let ran = kubectl_run(h.dir.path(), &kubeconfig, h.dir.path(), &renew, &args).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stderr.contains(&format!("renewed with CSR {renewal}")),
        "{ran}"
    );
    let cached: Value =
        serde_json::from_slice(&std::fs::read(&entry).expect("read")).expect("json");
    assert_eq!(cached["csr"], renewal.as_str());
    assert!(cached["pending"].is_null(), "{}", cached["pending"]);
    assert_eq!(csrs_by(&h.server, "jane").len(), 2);
}

/// The same against a real kube-apiserver (`KUBEBUILDER_ASSETS`), where RBAC (README's requester
/// rules and nothing else), CSR validation, the watch's field selector and SelfSubjectReview are
/// the server's own: `request` for an allow-listed user whose certificate logs in, then the exec
/// plugin's first certificate (with her login) and its renewal (with the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_apiserver_request_and_the_exec_plugin() {
    let Some((plane, _turn)) =
        crate::real_apiserver::plane("user::real_apiserver_request_and_the_exec_plugin").await
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    plane.apply(&serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "user-test-requester"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
                   "verbs": ["create", "get", "list", "watch"]}]
    }));
    plane.apply(&serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "user-test-requester-rita"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "user-test-requester"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "rita"}]
    }));
    // rita's login: the admin's credentials impersonating her (as her OIDC login would be her).
    let kubeconfig = d.join("rita.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: rita-login\n  user:\n    client-certificate: {}\n    client-key: {}\n    as: rita\n    as-groups: [system:authenticated]\ncontexts:\n- name: rita-login\n  context: {{cluster: envtest, user: rita-login}}\ncurrent-context: rita-login\n",
            plane.port,
            plane.ca_cert.display(),
            plane.dir.join("admin.crt").display(),
            plane.dir.join("admin.key").display()
        ),
    )
    .expect("kubeconfig");
    std::fs::write(
        d.join("policy.yaml"),
        "signerNames: [kubernetes.io/kube-apiserver-client]\nallowList:\n  - commonName: rita\n    groups: [developers]\n",
    )
    .expect("policy");
    let controller = ControllerProcess::start_with_kubeconfig(
        d,
        &(plane.ca_cert.clone(), plane.ca_key.clone()),
        &["--resync-interval-seconds", "3600"],
        &plane.admin,
    );
    controller.wait_synced().await;

    let work = d.join("work");
    std::fs::create_dir(&work).expect("work");
    let ran = kubectl_run(
        d,
        &kubeconfig,
        &work,
        &[],
        &[
            "csr-warden",
            "request",
            "--group",
            "developers",
            "--expiration",
            "1h",
            "--set-context",
            "rita-cert",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stderr.contains("created CSR rita-"),
        "the CN is who the server says: {ran}"
    );
    let (user, groups) = whoami(d, &kubeconfig, &[], "rita-cert").await;
    assert_eq!(user, "rita");
    assert!(groups.contains(&"developers".to_owned()), "{groups:?}");

    let ran = kubectl_run(
        d,
        &kubeconfig,
        d,
        &[],
        &[
            "csr-warden",
            "request",
            "--exec",
            "--context",
            "rita-login",
            "--common-name",
            "rita",
            "--group",
            "developers",
            "--expiration",
            "1h",
            "--set-context",
            "rita",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let (user, _) = whoami(d, &kubeconfig, &[], "rita").await;
    assert_eq!(user, "rita");
    let renew_now = [("CSR_WARDEN_RENEW_WHEN_REMAINING", "1")];
    let (user, groups) = whoami(d, &kubeconfig, &renew_now, "rita").await;
    assert_eq!(user, "rita");
    assert!(groups.contains(&"developers".to_owned()), "{groups:?}");
    let mut ritas: Vec<Value> = plane.get(&["csr"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["spec"]["username"] == "rita")
        .collect();
    ritas.sort_by_key(|c| {
        c["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|rv| rv.parse::<u64>().ok())
    });
    assert_eq!(ritas.len(), 3, "request, first use, renewal: {ritas:#?}");
    assert!(
        !groups_of(&ritas[1]).contains(&"developers".to_owned()),
        "the first with her login: {}",
        ritas[1]["spec"]
    );
    assert!(
        groups_of(&ritas[2]).contains(&"developers".to_owned()),
        "the renewal with the certificate: {}",
        ritas[2]["spec"]
    );
}
