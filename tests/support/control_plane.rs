//! A real control plane for tests, the way controller-runtime's envtest makes one: etcd and
//! kube-apiserver from the folder in `KUBEBUILDER_ASSETS` (so `setup-envtest` assets work too;
//! `scripts/test` points it at `../shared/kubernetes/unpack`), on free loopback ports, in a temp
//! dir, with a CA, a serving certificate, a service-account key and an admin client certificate
//! made here by openssl. kube-controller-manager is started on demand when the folder has it.
//!
//! Every process runs under a small `sh` guard that reads its stdin: when the test process ends
//! (passed, panicked or killed), the pipe closes and the guard SIGKILLs the process and, for
//! etcd, removes the temp dir. A [`ControlPlane`] dropped early stops them the same way.
//!
//! The API server writes an audit log (every request, its user and the code it answered), so
//! tests can see what the server itself said to csr-warden rather than read its log lines.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::openssl;

/// How long a start or a wait may take before the test fails saying what it waited for.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The Service CIDR; its first address is the ClusterIP of Service default/kubernetes.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const API_SERVER_CLUSTER_IP: &str = "10.96.0.1";

/// A process that dies with the test.
pub struct Guarded {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guarded {
    /// Start `program args` under the guard, its output in `log`; `cleanup` is removed after it
    /// is killed.
    fn start(program: &Path, args: &[String], log: &Path, cleanup: Option<&Path>) -> Guarded {
        let script = r#"prog=$1; log=$2; cleanup=$3; shift 3
"$prog" "$@" >>"$log" 2>&1 </dev/null &
pid=$!
read -r _ || true
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("guard")
            .arg(program)
            .arg(log)
            .arg(cleanup.map(|p| p.as_os_str()).unwrap_or_default())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdin = child.stdin.take();
        Guarded { child, stdin }
    }

    /// The guard's pid (the process itself is its child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the process now and wait until it is gone.
    pub fn kill(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// etcd + kube-apiserver (+ kube-controller-manager when asked), and the files to reach them.
pub struct ControlPlane {
    pub dir: PathBuf,
    assets: PathBuf,
    pub port: u16,
    etcd_port: u16,
    /// Kubeconfig of `kubernetes-admin` (O=system:masters).
    pub admin: PathBuf,
    /// The cluster CA: it signs the serving and client certificates the server trusts.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub audit_log: PathBuf,
    apiserver: Mutex<Option<Guarded>>,
    /// Flags kube-apiserver gets besides the harness's own (feature gates, runtime config).
    extra_apiserver_args: Vec<String>,
    // Dropped last: etcd's guard removes the dir.
    _etcd: Guarded,
}

/// The assets folder, or why there is none.
pub fn assets() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .ok_or("KUBEBUILDER_ASSETS is not set (scripts/test sets it from ../shared/kubernetes/unpack; or use setup-envtest)")?;
    for binary in ["etcd", "kube-apiserver"] {
        if !dir.join(binary).is_file() {
            return Err(format!(
                "KUBEBUILDER_ASSETS={} has no {binary}",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

/// The control plane this test binary shares, started the first time a test asks; None (with
/// one line saying why) when there are no assets.
pub fn shared(test: &str) -> Option<&'static ControlPlane> {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match SHARED.get_or_init(|| assets().map(|dir| ControlPlane::start(&dir))) {
        Ok(plane) => Some(plane),
        Err(why) => {
            eprintln!("SKIPPED {test}: no real API server: {why}");
            None
        }
    }
}

/// The flags that make kube-apiserver 1.36 serve PodCertificateRequests and
/// ClusterTrustBundles (beta, off by default).
pub fn pod_certificate_flags() -> Vec<String> {
    vec![
        "--feature-gates=PodCertificateRequest=true,ClusterTrustBundle=true".into(),
        "--runtime-config=certificates.k8s.io/v1beta1=true".into(),
    ]
}

/// Like [`shared`], for a control plane that serves the pod certificate APIs.
pub fn shared_with_pod_certificates(test: &str) -> Option<&'static ControlPlane> {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let plane = SHARED.get_or_init(|| {
        assets().map(|dir| ControlPlane::start_with(&dir, &pod_certificate_flags()))
    });
    match plane {
        Ok(plane) => Some(plane),
        Err(why) => {
            eprintln!("SKIPPED {test}: no real API server: {why}");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Poll `ready` until it holds, failing with `what` after [`START_TIMEOUT`]. Waiting for a
/// server to come up, not synchronising the test with the code under test.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl ControlPlane {
    pub fn start(assets: &Path) -> ControlPlane {
        Self::start_with(assets, &[])
    }

    /// A control plane whose kube-apiserver also gets `extra_apiserver_args`.
    pub fn start_with(assets: &Path, extra_apiserver_args: &[String]) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("csr-warden-envtest-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let path = |name: &str| dir.join(name);
        let s = |p: &Path| p.display().to_string();
        // The cluster CA, and what kube-apiserver needs of it.
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=envtest-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-keyout",
            &s(&path("ca.key")),
            "-out",
            &s(&path("ca.crt")),
        ]);
        let sign = |name: &str, subject: &str, ext: &str| {
            write(&path(&format!("{name}.ext")), ext);
            openssl(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &s(&path(&format!("{name}.key"))),
                "-out",
                &s(&path(&format!("{name}.csr"))),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &s(&path(&format!("{name}.csr"))),
                "-CA",
                &s(&path("ca.crt")),
                "-CAkey",
                &s(&path("ca.key")),
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                &s(&path(&format!("{name}.ext"))),
                "-out",
                &s(&path(&format!("{name}.crt"))),
            ]);
        };
        sign(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{API_SERVER_CLUSTER_IP},DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
            ),
        );
        sign(
            "admin",
            "/CN=kubernetes-admin/O=system:masters",
            "extendedKeyUsage=clientAuth\n",
        );
        openssl(&["genrsa", "-out", &s(&path("sa.key")), "2048"]);
        openssl(&[
            "rsa",
            "-in",
            &s(&path("sa.key")),
            "-pubout",
            "-out",
            &s(&path("sa.pub")),
        ]);
        write(
            &path("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
        );

        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Guarded::start(
            &assets.join("etcd"),
            &[
                "--name",
                "envtest",
                "--data-dir",
                &s(&path("etcd")),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("envtest={peer_url}"),
                "--initial-cluster-state",
                "new",
                "--unsafe-no-fsync",
            ]
            .map(String::from),
            &path("etcd.log"),
            Some(&dir),
        );
        let port = free_port();
        let admin = path("admin.kubeconfig");
        write(
            &admin,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: envtest\n  context: {{cluster: envtest, user: admin}}\ncurrent-context: envtest\n",
                ca = s(&path("ca.crt")),
                crt = s(&path("admin.crt")),
                key = s(&path("admin.key")),
            ),
        );
        let plane = ControlPlane {
            assets: assets.to_owned(),
            port,
            etcd_port,
            admin,
            ca_cert: path("ca.crt"),
            ca_key: path("ca.key"),
            audit_log: path("audit.log"),
            apiserver: Mutex::new(None),
            extra_apiserver_args: extra_apiserver_args.to_vec(),
            _etcd: etcd,
            dir,
        };
        plane.start_apiserver();
        // Tests create CSRs as many users (impersonated): let every authenticated user ask, as
        // the requester ClusterRole of manifests/ would once bound.
        plane.kubectl(
            &[
                "create",
                "clusterrole",
                "envtest-csr-requester",
                "--verb=create,get,list,watch",
                "--resource=certificatesigningrequests.certificates.k8s.io",
            ],
            None,
        );
        plane.kubectl(
            &[
                "create",
                "clusterrolebinding",
                "envtest-csr-requester",
                "--clusterrole=envtest-csr-requester",
                "--group=system:authenticated",
            ],
            None,
        );
        plane
    }

    fn start_apiserver(&self) {
        let s = |name: &str| self.dir.join(name).display().to_string();
        let args: Vec<String> = [
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            format!("--secure-port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", s("apiserver.crt")),
            format!("--tls-private-key-file={}", s("apiserver.key")),
            format!("--client-ca-file={}", s("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", s("sa.pub")),
            format!("--service-account-signing-key-file={}", s("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--endpoint-reconciler-type=none".into(),
            "--enable-bootstrap-token-auth=true".into(),
            "--allow-privileged=false".into(),
            format!("--audit-policy-file={}", s("audit-policy.yaml")),
            format!("--audit-log-path={}", s("audit.log")),
            "--audit-log-mode=blocking".into(),
            // Never rotated in a run: the default rotates at 100 MB, and a rotation mid-run
            // loses the events a count is taken from (the side-by-side bench writes more).
            "--audit-log-maxsize=1000000".into(),
        ]
        .into_iter()
        .chain(self.extra_apiserver_args.iter().cloned())
        .collect();
        let guard = Guarded::start(
            &self.assets.join("kube-apiserver"),
            &args,
            &self.dir.join("kube-apiserver.log"),
            None,
        );
        *self.apiserver.lock().expect("apiserver") = Some(guard);
        wait_until("kube-apiserver /readyz", || {
            self.try_kubectl(&["get", "--raw", "/readyz"], None).0
        });
        wait_until("Service default/kubernetes", || {
            self.try_kubectl(&["-n", "default", "get", "service", "kubernetes"], None)
                .0
        });
    }

    /// SIGKILL kube-apiserver and start it again on the same etcd: a real restart (watches end,
    /// resumed watches get 410 from the new watch cache).
    pub fn restart_apiserver(&self) {
        if let Some(mut old) = self.apiserver.lock().expect("apiserver").take() {
            old.kill();
        }
        self.start_apiserver();
    }

    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        super::kubectl(&self.admin, args, stdin)
    }

    /// kubectl as the admin; panics with kubectl's stderr if it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.try_kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    pub fn apply(&self, object: &Value) {
        self.kubectl(&["apply", "-f", "-"], Some(&object.to_string()));
    }

    /// Create as `user` in `groups` (impersonated by the admin): the API server sets the CSR's
    /// spec.username and spec.groups from this.
    pub fn create_as(&self, user: &str, groups: &[&str], object: &Value) {
        let mut args = vec!["create", "-f", "-", "--as", user];
        for group in groups {
            args.extend(["--as-group", group]);
        }
        self.kubectl(&args, Some(&object.to_string()));
    }

    pub fn get(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all, None)).expect("kubectl json")
    }

    /// Node `name`, its status.addresses set through the status subresource as a kubelet does.
    pub fn node(&self, name: &str, addresses: &[(&str, &str)]) {
        self.apply(&serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}
        }));
        self.set_node_addresses(name, addresses);
    }

    pub fn set_node_addresses(&self, name: &str, addresses: &[(&str, &str)]) {
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(kind, address)| serde_json::json!({"type": kind, "address": address}))
            .collect();
        let patch = serde_json::json!({"status": {"addresses": addresses}}).to_string();
        self.kubectl(
            &[
                "patch",
                "node",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        );
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        self.kubectl(
            &["-n", namespace, "create", "token", name, "--duration=2h"],
            None,
        )
        .trim()
        .to_owned()
    }

    /// A kubeconfig that authenticates with `token` only.
    pub fn token_kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        let path = dir.join("token.kubeconfig");
        write(
            &path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context: {{cluster: envtest, user: sa}}\ncurrent-context: envtest\n",
                self.port,
                self.ca_cert.display()
            ),
        );
        path
    }

    /// csr-warden's Namespace, ServiceAccount and RBAC from manifests/, and a kubeconfig in
    /// `dir` with that ServiceAccount's token (TokenRequest) and nothing else.
    pub fn as_csr_warden(&self, dir: &Path) -> PathBuf {
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        for file in [
            "00-namespace.yaml",
            "10-serviceaccount.yaml",
            "20-rbac.yaml",
        ] {
            self.kubectl(
                &["apply", "-f", &manifests.join(file).display().to_string()],
                None,
            );
        }
        let token = self.token("csr-warden", "csr-warden");
        self.token_kubeconfig(dir, &token)
    }

    /// kube-controller-manager with `controllers` (e.g. "csrsigning"), signing with the
    /// cluster CA; None when the assets folder has no kube-controller-manager (envtest's has
    /// none).
    pub fn controller_manager(&self, controllers: &str) -> Option<Guarded> {
        self.controller_manager_with(controllers, &[])
    }

    /// [`Self::controller_manager`] with `extra` flags (e.g.
    /// `--use-service-account-credentials=true`, as kubeadm runs it).
    pub fn controller_manager_with(&self, controllers: &str, extra: &[&str]) -> Option<Guarded> {
        let binary = self.assets.join("kube-controller-manager");
        if !binary.is_file() {
            return None;
        }
        let args: Vec<String> = [
            format!("--kubeconfig={}", self.admin.display()),
            format!("--controllers={controllers}"),
            format!("--cluster-signing-cert-file={}", self.ca_cert.display()),
            format!("--cluster-signing-key-file={}", self.ca_key.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=1000".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|flag| flag.to_string()))
        .collect();
        Some(Guarded::start(
            &binary,
            &args,
            &self.dir.join(format!("kcm-{controllers}.log")),
            None,
        ))
    }

    /// Every audit event so far (one JSON object a request), for what the server answered.
    pub fn audit_events(&self) -> Vec<Value> {
        self.audit_events_from(0)
    }

    /// The audit events after the first `first` (only those are parsed: at tens of thousands
    /// of CSRs the log is hundreds of MB).
    pub fn audit_events_from(&self, first: usize) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .skip(first)
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// How many audit events the log holds so far.
    pub fn audit_len(&self) -> usize {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .count()
    }
}
