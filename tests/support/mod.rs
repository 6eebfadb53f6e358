//! Shared test support: a fake API server, keys and CSRs made by openssl, the controller binary
//! run as a process.

#![allow(dead_code)]

pub mod apiserver;
pub mod bench;
pub mod control_plane;
pub mod go_reader;
pub mod procfs;
pub mod softhsm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

pub use apiserver::FakeApiServer;

pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// A fake API server with the usual users (jane, bob, agent-smith) and an openssl-made CA.
pub struct Harness {
    pub server: FakeApiServer,
    pub dir: tempfile::TempDir,
    pub ca: (PathBuf, PathBuf),
}

pub async fn harness() -> Harness {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = openssl_ca(dir.path(), KeyKind::P256, 365);
    server.add_user("jane-token", "jane", &["system:authenticated"]);
    server.add_user("bob-token", "bob", &["system:authenticated"]);
    server.add_user("smith-token", "agent-smith", &["system:authenticated"]);
    Harness { server, dir, ca }
}

impl Harness {
    /// A kube-apiserver-client CSR for `subject` (P-256 key by openssl), created as `token`'s user.
    pub fn create_client_csr(&self, token: &str, name: &str, subject: &str) {
        self.create_signer_csr(token, name, subject, CLIENT_SIGNER);
    }

    /// A client certificate CSR for `subject` and `signer`, created as `token`'s user.
    pub fn create_signer_csr(&self, token: &str, name: &str, subject: &str, signer: &str) {
        let pem = openssl_csr(self.dir.path(), name, KeyKind::P256, subject, None, &[]);
        self.server
            .create_csr(token, csr_object(name, signer, &["client auth"], &pem));
    }

    /// The controller with `policy` and with no default CA files (--ca-cert/--ca-key name files
    /// that do not exist): every CA it signs with is one the policy names.
    pub fn controller_with_policy(&self, policy: &str, flags: &[&str]) -> ControllerProcess {
        std::fs::write(self.dir.path().join("policy.yaml"), policy).expect("write policy");
        let missing = (
            self.dir.path().join("no-default-ca.crt"),
            self.dir.path().join("no-default-ca.key"),
        );
        ControllerProcess::start(&self.server, self.dir.path(), &missing, flags)
    }

    /// An admin's kubeconfig, for kubectl as the cluster's operator.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.server
            .add_user("admin-token", "admin", &["system:masters"]);
        self.server.kubeconfig(self.dir.path(), "admin-token")
    }
}

impl Harness {
    /// The controller binary against this harness's server and CA, with extra flags.
    pub fn controller(&self, flags: &[&str]) -> ControllerProcess {
        ControllerProcess::start(&self.server, self.dir.path(), &self.ca, flags)
    }

    /// Create an allow-listed CSR from jane named `marker` and wait until it is issued with both
    /// its Events. Watch events arrive in order, so once it is done the controller has seen
    /// everything that happened before it was created (and, with `--concurrency 1`, has
    /// finished with it).
    pub async fn caught_up(&self, marker: &str) {
        self.create_client_csr("jane-token", marker, "/CN=jane/O=developers");
        self.server
            .wait_for(&format!("{marker} issued with its Events"), |s| {
                issued(s, marker) && s.events_for(marker).len() == 2
            })
            .await;
    }

    /// A kubelet client certificate renewal: the node's own identity asks for
    /// `system:node:<node>`, allowed by a selfnodeclient SubjectAccessReview.
    pub fn create_kubelet_renewal(&self, name: &str, node: &str) {
        let user = format!("system:node:{node}");
        let token = format!("{node}-token");
        self.server.add_user(&token, &user, &["system:nodes"]);
        self.server.allow_sar(&user, "selfnodeclient");
        let pem = rcgen_csr(&user, &["system:nodes"], &[]);
        self.server.create_csr(
            &token,
            csr_object(
                name,
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &pem,
            ),
        );
    }

    /// A first kubelet client CSR from a bootstrap token's user, for `system:node:<node>`; no
    /// SubjectAccessReview allows it unless the test says so.
    pub fn create_bootstrap_client_csr(&self, name: &str, node: &str) {
        self.server.add_user(
            "bootstrap-token",
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        let pem = openssl_csr(
            self.dir.path(),
            name,
            KeyKind::P256,
            &format!("/CN=system:node:{node}/O=system:nodes"),
            None,
            &[],
        );
        self.server.create_csr(
            "bootstrap-token",
            csr_object(
                name,
                KUBELET_CLIENT_SIGNER,
                &["digital signature", "client auth"],
                &pem,
            ),
        );
    }

    /// The running controller's policy ConfigMap, as the chart installs it: csr-warden/csr-warden-policy.
    pub fn install_policy_configmap(&self) {
        self.server.put_configmap(
            "csr-warden",
            "csr-warden-policy",
            &[("policy.yaml", POLICY)],
        );
    }

    /// `csr-warden check ...` as an operator runs it, with an admin's kubeconfig: (exit code,
    /// stdout, stderr).
    pub async fn check_live(&self, args: &[&str]) -> (i32, String, String) {
        let kubeconfig = self.admin_kubeconfig();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_csr-warden"))
            .arg("check")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .await
            .expect("run csr-warden check");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A kubelet serving CSR from worker-1's own identity for `sans` ("DNS:worker-1,IP:..."); the
    /// Node worker-1 has 10.0.0.11 and hostname worker-1.
    pub fn create_serving_csr(&self, name: &str, sans: &str) {
        self.server.add_user(
            "node-token",
            "system:node:worker-1",
            &["system:nodes", "system:authenticated"],
        );
        self.server.add_node(
            "worker-1",
            &[("InternalIP", "10.0.0.11"), ("Hostname", "worker-1")],
        );
        let pem = openssl_csr(
            self.dir.path(),
            name,
            KeyKind::P256,
            "/CN=system:node:worker-1/O=system:nodes",
            Some(sans),
            &[],
        );
        self.server.create_csr(
            "node-token",
            csr_object(
                name,
                KUBELET_SERVING_SIGNER,
                &["digital signature", "server auth"],
                &pem,
            ),
        );
    }

    /// `n` allow-listed CSRs from jane, named `{prefix}-000` ... in creation order.
    pub fn create_jane_backlog(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("{prefix}-{i:03}");
                let pem = rcgen_csr("jane", &["developers"], &[]);
                self.server.create_csr(
                    "jane-token",
                    csr_object(&name, CLIENT_SIGNER, &["client auth"], &pem),
                );
                name
            })
            .collect()
    }
}

/// The value of the first metric sample line starting with `prefix`, e.g.
/// `csr_warden_certificates_issued_total{signer="..."}`.
pub fn metric_sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The CSR as the server has it now; it must exist.
pub fn csr_state(server: &FakeApiServer, name: &str) -> Value {
    server.csr(name).expect("csr exists")
}

/// The CSR has a certificate.
pub fn issued(server: &FakeApiServer, name: &str) -> bool {
    server.csr(name).and_then(|c| certificate_pem(&c)).is_some()
}

/// The CSR carries a condition of this type.
pub fn has(server: &FakeApiServer, name: &str, kind: &str) -> bool {
    server
        .csr(name)
        .is_some_and(|c| condition(&c, kind).is_some())
}

/// A CSR built with rcgen (P-256): CN, then each O in order (the second and later O by OID,
/// since rcgen keeps one value per type), then DNS/IP SANs.
/// A CA as a policy file's `ca: {cert, key}`.
pub fn ca_yaml(ca: &(PathBuf, PathBuf)) -> String {
    format!("{{ cert: {}, key: {} }}", ca.0.display(), ca.1.display())
}

/// What a cluster answers about an ordinary identity: no to every privilege check of the
/// ceiling (`policy::default_privilege_checks`), so the policy's other rules decide.
pub fn unprivileged() -> csr_warden::policy::ClusterFacts {
    csr_warden::policy::ClusterFacts {
        privilege: Some(csr_warden::policy::PrivilegeReview::Answered(
            csr_warden::policy::default_privilege_checks()
                .into_iter()
                .map(|check| (check.name, false))
                .collect(),
        )),
        ..Default::default()
    }
}

pub fn rcgen_csr(common_name: &str, organizations: &[&str], sans: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(sans).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    for (i, organization) in organizations.iter().enumerate() {
        let kind = if i == 0 {
            rcgen::DnType::OrganizationName
        } else {
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
        };
        params.distinguished_name.push(kind, *organization);
    }
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// Run openssl; panic with its stderr if it fails.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Key types openssl makes for requests and CAs.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    Rsa(u32),
    /// PKCS#1 "RSA PRIVATE KEY", as kubeadm writes ca.key.
    RsaPkcs1(u32),
    P256,
    /// SEC1 "EC PRIVATE KEY".
    P256Sec1,
    P384,
    Ed25519,
}

pub fn openssl_key(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    let p = path.to_str().expect("utf-8 path");
    match kind {
        KeyKind::Rsa(bits) => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
            "-out",
            p,
        ]),
        KeyKind::RsaPkcs1(bits) => {
            openssl(&["genrsa", "-traditional", "-out", p, &bits.to_string()])
        }
        KeyKind::P256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        KeyKind::P256Sec1 => openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            p,
        ]),
        KeyKind::P384 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            p,
        ]),
        KeyKind::Ed25519 => openssl(&["genpkey", "-algorithm", "ED25519", "-out", p]),
    };
    path
}

/// A CSR made by `openssl req`. `sans` like "DNS:worker-1,IP:10.0.0.1"; `extra` more req args.
pub fn openssl_csr(
    dir: &Path,
    name: &str,
    kind: KeyKind,
    subject: &str,
    sans: Option<&str>,
    extra: &[&str],
) -> String {
    let key = openssl_key(dir, name, kind);
    let out = dir.join(format!("{name}.csr"));
    let mut args = vec![
        "req",
        "-new",
        "-key",
        key.to_str().expect("path"),
        "-subj",
        subject,
        "-out",
        out.to_str().expect("path"),
    ];
    let san_arg;
    if let Some(sans) = sans {
        san_arg = format!("subjectAltName={sans}");
        args.extend(["-addext", &san_arg]);
    }
    args.extend(extra);
    openssl(&args);
    std::fs::read_to_string(out).expect("read csr")
}

/// A CA made by openssl, as an operator would mount it: (tls.crt, tls.key).
pub fn openssl_ca(dir: &Path, kind: KeyKind, days: u32) -> (PathBuf, PathBuf) {
    let key = openssl_key(dir, "ca", kind);
    let cert = dir.join("ca.crt");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key.to_str().expect("path"),
        "-subj",
        "/CN=csr-warden test CA",
        "-days",
        &days.to_string(),
        "-out",
        cert.to_str().expect("path"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    (cert, key)
}

/// A CSR object as a user would `kubectl create` it.
pub fn csr_object(name: &str, signer: &str, usages: &[&str], pem: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": usages,
            "expirationSeconds": 86400,
        }
    })
}

pub fn condition_types(csr: &Value) -> Vec<String> {
    csr["status"]["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn condition<'a>(csr: &'a Value, kind: &str) -> Option<&'a Value> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

pub fn certificate_pem(csr: &Value) -> Option<String> {
    let b64 = csr["status"]["certificate"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// `openssl verify -CAfile ca cert` succeeds.
pub fn openssl_verify(dir: &Path, ca: &Path, cert_pem: &str, purpose: &str) -> String {
    let cert = dir.join("verify.crt");
    std::fs::write(&cert, cert_pem).expect("write cert");
    String::from_utf8_lossy(&openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().expect("path"),
        "-purpose",
        purpose,
        cert.to_str().expect("path"),
    ]))
    .into_owned()
}

/// Whether `openssl verify` accepts `cert_pem` as issued by `ca` (false, not a panic, when it
/// does not).
pub fn openssl_verifies(dir: &Path, ca: &Path, cert_pem: &str, purpose: &str) -> bool {
    let cert = dir.join("verify.crt");
    std::fs::write(&cert, cert_pem).expect("write cert");
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .args(["-purpose", purpose])
        .arg(&cert)
        .output()
        .expect("openssl must be installed")
        .status
        .success()
}

/// `openssl x509 -text` of a PEM certificate.
pub fn openssl_text(dir: &Path, cert_pem: &str) -> String {
    let cert = dir.join("text.crt");
    std::fs::write(&cert, cert_pem).expect("write cert");
    String::from_utf8_lossy(&openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        cert.to_str().expect("path"),
    ]))
    .into_owned()
}

pub const POLICY: &str = r#"
signerNames:
  - kubernetes.io/kube-apiserver-client
  - kubernetes.io/kube-apiserver-client-kubelet
  - kubernetes.io/kubelet-serving
forbiddenGroups: [system:masters]
kubelet: { client: true, serving: true }
allowList:
  - commonName: jane
    groups: [developers]
unmatched: leave
signing:
  defaultExpirationSeconds: 86400
  maxExpirationSeconds: 2592000
"#;

/// The csr-warden binary running against a fake API server, its log lines collected.
pub struct ControllerProcess {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
    changes: watch::Receiver<usize>,
}

impl ControllerProcess {
    pub fn start(
        server: &FakeApiServer,
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        extra: &[&str],
    ) -> ControllerProcess {
        let log =
            std::env::var("CSR_WARDEN_TEST_LOG").unwrap_or_else(|_| "csr_warden=debug,info".into());
        Self::start_logging(server, dir, ca, extra, &log)
    }

    /// `start`, with a kubeconfig of the test's own (e.g. one that reads a token file).
    pub fn start_with_kubeconfig(
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        extra: &[&str],
        kubeconfig: &Path,
    ) -> ControllerProcess {
        Self::spawn(dir, ca, extra, "csr_warden=debug,info", kubeconfig, None)
    }

    /// `start`, with the controller's RUST_LOG given explicitly.
    pub fn start_logging(
        server: &FakeApiServer,
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        extra: &[&str],
        rust_log: &str,
    ) -> ControllerProcess {
        let kubeconfig = server.kubeconfig(dir, apiserver::CONTROLLER_TOKEN);
        Self::spawn(dir, ca, extra, rust_log, &kubeconfig, None)
    }

    /// csr-warden as the manifests run it (`RUST_LOG=info`), its log written to `log` the way
    /// a container runtime keeps it, not read by this process: for the benches, where reading
    /// and parsing every line would cost the machine CPU that kube-controller-manager's log
    /// (also a file) does not. [`ControllerProcess::lines`] stays empty.
    pub fn start_as_deployed(
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        extra: &[&str],
        kubeconfig: &Path,
        log: &Path,
    ) -> ControllerProcess {
        let file = std::fs::File::create(log).expect("csr-warden's log file");
        Self::spawn(dir, ca, extra, "info", kubeconfig, Some(file))
    }

    /// Started with its stdout read line by line into [`ControllerProcess::lines`], or written
    /// to `log_file`.
    fn spawn(
        dir: &Path,
        ca: &(PathBuf, PathBuf),
        extra: &[&str],
        rust_log: &str,
        kubeconfig: &Path,
        log_file: Option<std::fs::File>,
    ) -> ControllerProcess {
        let policy = dir.join("policy.yaml");
        if !policy.exists() {
            std::fs::write(&policy, POLICY).expect("write policy");
        }
        // CSR_WARDEN_BIN: another build of csr-warden, for a bench's before-and-after.
        let binary = std::env::var_os("CSR_WARDEN_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_csr-warden")));
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["run", "--policy"])
            .arg(&policy)
            .arg("--ca-cert")
            .arg(&ca.0)
            .arg("--ca-key")
            .arg(&ca.1)
            .args(["--http-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command.stdout(log_file.map_or_else(Stdio::piped, Stdio::from));
        let mut child = command.spawn().expect("start csr-warden");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, changes) = watch::channel(0usize);
        // None when it goes to a file.
        let Some(stdout) = child.stdout.take() else {
            return ControllerProcess {
                child,
                lines,
                changes,
            };
        };
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| json!({"raw": line}));
                let count = {
                    let mut lines = sink.lock().expect("lines");
                    lines.push(value);
                    lines.len()
                };
                let _ = tx.send(count);
            }
        });
        ControllerProcess {
            child,
            lines,
            changes,
        }
    }

    /// Wait for the process to exit by itself: its exit code and every log line it wrote.
    pub async fn wait_exit(mut self) -> (Option<i32>, Vec<Value>) {
        let status = self.child.wait().await.expect("wait for csr-warden");
        // The reader ends (and drops its sender) once stdout is closed and read to the end.
        while self.changes.changed().await.is_ok() {}
        (status.code(), self.lines())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().expect("lines").clone()
    }

    /// Wait for a log line matching `check` (wakes on each new line; timeout only reports a hang).
    pub async fn wait_for_log(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_logs(what, 1, check).await.remove(0)
    }

    /// Wait until `count` log lines match `check`; returns them.
    pub async fn wait_for_logs(
        &self,
        what: &str,
        count: usize,
        check: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let matching: Vec<Value> = self.lines().into_iter().filter(|l| check(l)).collect();
            if matching.len() >= count {
                return matching;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "timed out waiting for log line: {what}\nlog:\n{:#?}",
                    self.lines()
                ),
            }
        }
    }

    /// Wait until the controller's CSR watch has synced (its first list is complete).
    pub async fn wait_synced(&self) {
        self.wait_for_log("the watch synced", |l| {
            l["message"] == "watch synced; deciding CSRs"
        })
        .await;
    }

    /// GET a path from the controller's HTTP server (address from its start-up log line).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let line = self
            .wait_for_log("HTTP server address", |l| {
                l["message"] == "serving /healthz, /readyz and /metrics"
            })
            .await;
        let addr = line["addr"].as_str().expect("addr field").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect to csr-warden");
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// Stop the process (SIGKILL, as a node failure would) and wait for it to exit.
    pub async fn kill(mut self) -> Vec<Value> {
        let _ = self.child.kill().await;
        self.lines()
    }

    /// Stop the process with SIGTERM, as Kubernetes does, and wait for it to exit.
    pub async fn terminate(mut self) -> Vec<Value> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
        self.lines()
    }
}

/// Log lines about one CSR.
pub fn log_about<'a>(lines: &'a [Value], csr: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["csr"] == csr).collect()
}

/// Run kubectl against the fake server with the given kubeconfig; returns (success, stdout, stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    // HOME beside the test kubeconfig keeps kubectl's cache out of the user's home.
    kubectl_with_home(kubeconfig, kubeconfig.parent(), args, stdin)
}

/// `kubectl`, with HOME set to `home`, or left as the user's (exec credential plugins live there).
pub fn kubectl_with_home(
    kubeconfig: &Path,
    home: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut command = Command::new("kubectl");
    command.args(args).env("KUBECONFIG", kubeconfig);
    if let Some(home) = home {
        command.env("HOME", home);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl must be installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("kubectl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
