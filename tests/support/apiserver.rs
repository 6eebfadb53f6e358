//! An in-process fake Kubernetes API server: just enough of kube-apiserver for csr-warden and for
//! kubectl, with the behaviour that matters for correctness kept faithful:
//! HTTPS, bearer tokens (401 otherwise), list + watch with resourceVersions, the /approval and
//! /status subresources with 409 on a stale resourceVersion and 422 on illegal condition or
//! certificate changes, Events (events.k8s.io/v1, also served as core/v1 for kubectl),
//! SubjectAccessReviews answered as kube-apiserver answers them from the ClusterRoleBindings and
//! RoleBindings the test sets (RBAC's rule matching, and system:masters allowed everything),
//! Nodes, and (once [`FakeApiServer::serve_pod_certificates`] turns the API on, as
//! kube-apiserver needs a feature gate and a runtime-config for it) PodCertificateRequests in
//! certificates.k8s.io/v1beta1 with their `status` subresource.
//!
//! Like a real API server without admission plugins, it sets spec.username/groups/uid from the
//! caller's token and does not stop a CSR for O=system:masters: the controller must.

#![allow(dead_code)]
// Handlers return ready HTTP responses as errors; boxing them would only add noise in a test server.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
pub use hyper::Method;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Who a bearer token stands for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
    pub uid: String,
}

/// One write a client made to a CSR, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrWrite {
    pub csr: String,
    /// "approval" or "status"
    pub subresource: String,
    pub outcome: u16,
    /// When the server answered, for latency figures in the load test.
    pub at: std::time::Instant,
}

/// One write a client made to a PodCertificateRequest's status, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrWrite {
    /// namespace/name
    pub pcr: String,
    pub outcome: u16,
}

/// The resource name of PodCertificateRequests, as in their path and in `other_history`.
pub const PCRS: &str = "podcertificaterequests";

#[derive(Debug, Clone)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

/// Faults a test can arm.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer the next N approval writes with 409, as if another client had just changed the CSR
    /// (the CSR's resourceVersion is bumped so the controller's copy really is stale).
    pub conflict_approvals: usize,
    /// Same for status writes.
    pub conflict_status: usize,
    /// Error answers for matching requests, used up in order.
    pub errors: Vec<ErrorFault>,
    /// The next `cut_watches` watch streams end in the middle of an event, after
    /// `cut_after_events` whole events.
    pub cut_watches: usize,
    pub cut_after_events: usize,
    /// The next N watch requests get a 410 Gone "too old resource version" in the stream.
    pub gone_watches: usize,
    /// Every response waits this long first.
    pub delay: Duration,
    /// Answer lists with at most this many items a page (a real server may return fewer than
    /// the client's limit), so that relists span pages as they do on a real cluster.
    pub page_limit: Option<usize>,
    /// The next N watch requests are answered and then stay silent forever (a half-open
    /// connection): no events, no bookmarks, no end.
    pub stall_watches: usize,
    /// SubjectAccessReviews are answered only after this long (an overloaded authorizer or
    /// webhook).
    pub slow_reviews: Duration,
    /// Only the kubelet client reviews (`certificatesigningrequests/nodeclient` and
    /// `selfnodeclient`) are answered after this long: an authorizer slow for one path.
    pub slow_node_reviews: Duration,
    /// The next N CSR deletions reach no watcher: the controller's cache keeps the CSR until a
    /// fresh list shows it is gone.
    pub hide_deletions: usize,
    /// The next N CSR creations reach no watcher (as if the watch had dropped them): only a
    /// fresh list shows them.
    pub hide_creations: usize,
    /// The next N changes to a CSR (an approval, a certificate, a label) reach no watcher.
    pub hide_updates: usize,
    /// CSRs by name whose every status write carrying a certificate is refused with 422 Invalid,
    /// as kube-apiserver refuses a certificate Go's `x509.ParseCertificate` cannot parse (see
    /// [`INVALID_CERTIFICATE`]). The write is recorded with its 422.
    pub refuse_certificates: Vec<String>,
}

/// Why kube-apiserver's validation refuses the certificates of [`Faults::refuse_certificates`]:
/// what Go (1.23 and later) says of a certificate with a negative serial.
pub const INVALID_CERTIFICATE: &str = "x509: negative serial number";

/// Answer `remaining` requests whose method and path match with `status` (and Retry-After).
#[derive(Debug, Clone)]
pub struct ErrorFault {
    pub method: Option<Method>,
    pub path_contains: String,
    pub status: u16,
    pub retry_after_seconds: Option<u32>,
    pub remaining: usize,
}

impl ErrorFault {
    pub fn new(method: Option<Method>, path_contains: &str, status: u16, remaining: usize) -> Self {
        ErrorFault {
            method,
            path_contains: path_contains.into(),
            status,
            retry_after_seconds: (status == 429).then_some(1),
            remaining,
        }
    }
}

/// One rule of a Role or ClusterRole: rbac.authorization.k8s.io/v1 PolicyRule (resource rules;
/// nonResourceURLs are not modelled), matched as kube-apiserver's RBAC authorizer matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    /// `res`, `res/sub`, `*` or `*/sub`.
    pub resources: Vec<String>,
    /// Empty: every name; else the request must name one of these.
    pub resource_names: Vec<String>,
}

impl PolicyRule {
    pub fn new(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: owned(verbs),
            api_groups: owned(api_groups),
            resources: owned(resources),
            resource_names: Vec::new(),
        }
    }

    /// Only these resourceNames.
    pub fn names(mut self, names: &[&str]) -> Self {
        self.resource_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// k8s.io/kubernetes/pkg/apis/rbac/v1 `RuleAllows` for a resource request: VerbMatches,
    /// APIGroupMatches, ResourceMatches and ResourceNameMatches.
    fn allows(&self, request: &ResourceRequest) -> bool {
        let has = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        let combined = if request.subresource.is_empty() {
            request.resource.clone()
        } else {
            format!("{}/{}", request.resource, request.subresource)
        };
        let resource = self.resources.iter().any(|rule| {
            rule == "*"
                || *rule == combined
                || (!request.subresource.is_empty()
                    && rule.strip_prefix("*/") == Some(request.subresource.as_str()))
        });
        let name = self.resource_names.is_empty() || self.resource_names.contains(&request.name);
        has(&self.verbs, &request.verb) && has(&self.api_groups, &request.group) && resource && name
    }
}

/// Whom a binding names: rbac.authorization.k8s.io/v1 Subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RbacSubject {
    User(String),
    Group(String),
    /// Matches the user `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

impl RbacSubject {
    pub fn user(name: &str) -> Self {
        RbacSubject::User(name.into())
    }

    pub fn group(name: &str) -> Self {
        RbacSubject::Group(name.into())
    }

    pub fn service_account(namespace: &str, name: &str) -> Self {
        RbacSubject::ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// RBAC's appliesToUser: by user name, by one of the request's groups (as the review gives
    /// them: nothing is added), or by the service account's user name.
    fn applies_to(&self, user: &str, groups: &[String]) -> bool {
        match self {
            RbacSubject::User(name) => name == user,
            RbacSubject::Group(name) => groups.contains(name),
            RbacSubject::ServiceAccount { namespace, name } => {
                user == format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }

    /// As RBAC's describeSubject puts it in a reason.
    fn describe(&self) -> String {
        match self {
            RbacSubject::User(name) => format!("User {name:?}"),
            RbacSubject::Group(name) => format!("Group {name:?}"),
            RbacSubject::ServiceAccount { namespace, name } => {
                format!("ServiceAccount {:?}", format!("{namespace}/{name}"))
            }
        }
    }
}

/// A ClusterRoleBinding (namespace None) or RoleBinding of one subject to its own role's rules.
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    namespace: Option<String>,
    subject: RbacSubject,
    rules: Vec<PolicyRule>,
}

impl Binding {
    /// As RBAC's clusterRoleBindingDescriber / roleBindingDescriber.
    fn describe(&self) -> String {
        match &self.namespace {
            None => format!(
                "ClusterRoleBinding {:?} of ClusterRole {:?} to {}",
                self.name,
                self.name,
                self.subject.describe()
            ),
            Some(namespace) => format!(
                "RoleBinding {:?} of Role {:?} to {}",
                format!("{}/{namespace}", self.name),
                self.name,
                self.subject.describe()
            ),
        }
    }
}

/// spec.resourceAttributes of a SubjectAccessReview; a missing field is "".
#[derive(Debug, Default)]
struct ResourceRequest {
    namespace: String,
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    name: String,
}

impl ResourceRequest {
    fn from(attributes: &Value) -> Self {
        let field = |key: &str| attributes[key].as_str().unwrap_or_default().to_owned();
        ResourceRequest {
            namespace: field("namespace"),
            verb: field("verb"),
            group: field("group"),
            resource: field("resource"),
            subresource: field("subresource"),
            name: field("name"),
        }
    }
}

/// RBAC's decision for a resource request, as kube-apiserver's RBACAuthorizer visits the rules:
/// every ClusterRoleBinding, then (only for a request in a namespace) that namespace's
/// RoleBindings. The reason of the first rule that allows, if any.
fn rbac_allows(
    bindings: &[Binding],
    user: &str,
    groups: &[String],
    request: &ResourceRequest,
) -> Option<String> {
    let cluster = bindings.iter().filter(|b| b.namespace.is_none());
    let namespaced = bindings.iter().filter(|b| {
        !request.namespace.is_empty() && b.namespace.as_deref() == Some(request.namespace.as_str())
    });
    cluster
        .chain(namespaced)
        .filter(|b| b.subject.applies_to(user, groups))
        .find(|b| b.rules.iter().any(|rule| rule.allows(request)))
        .map(|b| format!("RBAC: allowed by {}", b.describe()))
}

#[derive(Default)]
struct State {
    rv: u64,
    csrs: BTreeMap<String, Value>,
    history: Vec<WatchEvent>,
    events: Vec<Value>,
    nodes: BTreeMap<String, Value>,
    /// SubjectAccessReviews asked.
    reviews_asked: usize,
    /// The spec of each SubjectAccessReview asked, in order.
    reviews: Vec<Value>,
    /// ClusterRoleBindings and RoleBindings the SubjectAccessReviews are answered from.
    bindings: Vec<Binding>,
    /// Event creations that were valid (counted, so a test sees a retry loop as a number).
    events_posted: usize,
    /// Lists of core/v1 Events served.
    event_lists: usize,
    /// Service default/kubernetes and its EndpointSlices, by name.
    services: BTreeMap<String, Value>,
    endpoint_slices: BTreeMap<String, Value>,
    /// PodCertificateRequests by namespace/name.
    pcrs: BTreeMap<String, Value>,
    /// Whether certificates.k8s.io/v1beta1 PodCertificateRequests are served at all.
    pod_certificates_served: bool,
    /// Writes to PodCertificateRequests' status, in order, with their answers.
    pcr_writes: Vec<PcrWrite>,
    /// Pages of PodCertificateRequest lists served.
    pcr_list_pages: usize,
    /// Watch events of Nodes, Services, EndpointSlices and PodCertificateRequests:
    /// (resource, event).
    other_history: Vec<(&'static str, WatchEvent)>,
    /// core/v1 ConfigMaps by namespace/name.
    configmaps: BTreeMap<String, Value>,
    /// (user or group, subresource) pairs a SubjectAccessReview allows.
    sar_allow: Vec<(String, String)>,
    writes: Vec<CsrWrite>,
    faults: Faults,
    tokens: HashMap<String, Identity>,
    /// coordination.k8s.io Leases by namespace/name, with the field manager that owns
    /// spec.holderIdentity (enough server-side-apply conflict logic for leader election).
    leases: BTreeMap<String, (Value, Option<String>)>,
    /// Requests refused with 401.
    unauthorized: usize,
    /// Watches from a resourceVersion below this get 410 Gone: like a restarted kube-apiserver,
    /// whose new watch cache starts at the resourceVersion it listed from etcd on start-up.
    history_floor: u64,
    /// Paginated lists in progress: the snapshot each continue token reads from.
    list_snapshots: HashMap<u64, (u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
    /// CSR writes (PUT /approval, /status) being answered right now, and the most at once.
    csr_writes_in_flight: usize,
    max_csr_writes_in_flight: usize,
    /// Approval writes that succeeded, in the order the server took them.
    approvals_in_order: Vec<String>,
    reads: CsrReads,
}

/// How the CSRs were read: list pages by what they carried, and single GETs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CsrReads {
    /// Pages of whole CSRs selected by signer (`fieldSelector=spec.signerName=...`).
    pub whole_pages_by_signer: usize,
    /// Pages of names and resourceVersions only (`as=PartialObjectMetadataList`).
    pub metadata_pages: usize,
    /// GETs of one CSR.
    pub gets: usize,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// The cluster CA: it signs the serving certificate and is the kubeconfig's
    /// certificate-authority-data.
    pub ca_pem: String,
    pub ca_key_pem: String,
    state: Arc<Mutex<State>>,
    changes: watch::Receiver<u64>,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    /// Open connections, so that a "restart" can drop them all.
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Bumped by a restart: open watch streams end.
    restarts: watch::Sender<u64>,
    /// While true, the server is "down": connections are closed as soon as they arrive.
    down: std::sync::atomic::AtomicBool,
    /// Connections closed because the server was down.
    refused: std::sync::atomic::AtomicUsize,
    /// Connections open now, and the most open at once.
    open: std::sync::atomic::AtomicUsize,
    max_open: std::sync::atomic::AtomicUsize,
    state: Arc<Mutex<State>>,
    events_tx: broadcast::Sender<WatchEvent>,
    /// Events of Nodes, Services, EndpointSlices and PodCertificateRequests, with their
    /// resource.
    other_tx: broadcast::Sender<(&'static str, WatchEvent)>,
    changes_tx: watch::Sender<u64>,
}

impl Shared {
    /// Run `f` on the state and tell waiters something changed.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = {
            let mut state = self.state.lock().expect("fake apiserver state poisoned");
            f(&mut state)
        };
        self.changes_tx.send_modify(|n| *n += 1);
        out
    }

    fn record_other(
        &self,
        state: &mut State,
        resource: &'static str,
        kind: &'static str,
        object: Value,
    ) {
        let event = WatchEvent {
            rv: state.rv,
            kind,
            object,
        };
        state.other_history.push((resource, event.clone()));
        let _ = self.other_tx.send((resource, event));
    }

    fn record(&self, state: &mut State, kind: &'static str, object: Value) {
        if kind == "MODIFIED" && state.faults.hide_updates > 0 {
            state.faults.hide_updates -= 1;
            return;
        }
        let event = WatchEvent {
            rv: state.rv,
            kind,
            object,
        };
        state.history.push(event.clone());
        let _ = self.events_tx.send(event);
    }
}

pub const CONTROLLER_TOKEN: &str = "csr-warden-token";
pub const CONTROLLER_USER: &str = "system:serviceaccount:csr-warden:csr-warden";
pub const ADMIN_TOKEN: &str = "admin-token";

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // As kubeadm does it: a cluster CA (the kubeconfig's certificate-authority, a pod's
        // ca.crt) that signs the serving certificate.
        let ca_key = rcgen::KeyPair::generate().expect("cluster CA key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-kubernetes-ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("cluster CA");
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("server cert params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-apiserver");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        // Client certificates signed by the cluster CA authenticate, as with kube-apiserver's
        // --client-ca-file: CN is the user, every O a group. A bearer token works without one.
        let mut client_roots = rustls::RootCertStore::empty();
        client_roots.add(ca_cert.der().clone()).expect("client CA");
        let client_verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(client_roots))
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
        let server_config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("tls config");
        let mut server_config = server_config;
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

        let mut state = State {
            rv: 1000,
            ..Default::default()
        };
        state.tokens.insert(
            CONTROLLER_TOKEN.into(),
            Identity {
                username: CONTROLLER_USER.into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:authenticated".into(),
                ],
                uid: "sa-uid".into(),
            },
        );
        state.tokens.insert(
            ADMIN_TOKEN.into(),
            Identity {
                username: "kubernetes-admin".into(),
                groups: vec![
                    "kubeadm:cluster-admins".into(),
                    "system:authenticated".into(),
                ],
                uid: "admin-uid".into(),
            },
        );
        let state = Arc::new(Mutex::new(state));
        let (events_tx, _) = broadcast::channel(65_536);
        let (changes_tx, changes) = watch::channel(0);
        let shared = Arc::new(Shared {
            connections: Mutex::new(Vec::new()),
            restarts: watch::channel(0).0,
            down: Default::default(),
            refused: Default::default(),
            open: Default::default(),
            max_open: Default::default(),
            state: state.clone(),
            events_tx,
            other_tx: broadcast::channel(65_536).0,
            changes_tx,
        });

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let serve_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut shutdown_rx => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                use std::sync::atomic::Ordering::SeqCst;
                if serve_shared.down.load(SeqCst) {
                    drop(tcp);
                    serve_shared.refused.fetch_add(1, SeqCst);
                    serve_shared.changes_tx.send_modify(|n| *n += 1);
                    continue;
                }
                let acceptor = acceptor.clone();
                let shared = serve_shared.clone();
                let open = shared.open.fetch_add(1, SeqCst) + 1;
                shared.max_open.fetch_max(open, SeqCst);
                let task = tokio::spawn(async move {
                    // Counted down however the connection ends (closed, or aborted by a restart).
                    struct Open(Arc<Shared>);
                    impl Drop for Open {
                        fn drop(&mut self) {
                            self.0
                                .open
                                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _open = Open(shared.clone());
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let certificate_user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| identity_of_certificate(leaf));
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        let certificate_user = certificate_user.clone();
                        async move {
                            Ok::<_, Infallible>(handle(shared, request, certificate_user).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                let mut open = serve_shared.connections.lock().expect("connections");
                open.retain(|c| !c.is_finished());
                open.push(task.abort_handle());
            }
        });
        let server = FakeApiServer {
            addr,
            ca_pem,
            ca_key_pem,
            state,
            changes,
            shared,
            shutdown: Some(shutdown),
        };
        // Every cluster has these: the API server's ClusterIP (first of the Service CIDR) and
        // the address it advertises.
        server.set_api_server("10.96.0.1", &["192.0.2.10"]);
        server
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Register a user token (for kubectl as that user, or to create CSRs as them).
    pub fn add_user(&self, token: &str, username: &str, groups: &[&str]) {
        self.shared.mutate(|state| {
            state.tokens.insert(
                token.into(),
                Identity {
                    username: username.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    uid: format!("uid-{username}"),
                },
            )
        });
    }

    /// A kubeconfig file for `token`, for the controller binary and for kubectl.
    pub fn kubeconfig(&self, dir: &std::path::Path, token: &str) -> std::path::PathBuf {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\ncurrent-context: fake\n",
            self.url()
        );
        let path = dir.join(format!("kubeconfig-{token}"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A kubeconfig that logs in with a client certificate (PEM) and its key instead of a token.
    pub fn kubeconfig_with_certificate(
        &self,
        dir: &std::path::Path,
        name: &str,
        certificate_pem: &str,
        key_pem: &str,
    ) -> std::path::PathBuf {
        use base64::Engine;
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\ncurrent-context: fake\n",
            self.url(),
            b64(&self.ca_pem),
            b64(certificate_pem),
            b64(key_pem)
        );
        let path = dir.join(format!("kubeconfig-cert-{name}"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Create a CSR as the user behind `token`, as `kubectl create` would.
    pub fn create_csr(&self, token: &str, csr: Value) -> Value {
        let identity = self
            .state
            .lock()
            .expect("state")
            .tokens
            .get(token)
            .cloned()
            .expect("known token");
        let shared = self.shared.clone();
        create_csr(&shared, &identity, csr).expect("create csr")
    }

    /// Create Node `name` with these (type, address) pairs, or set its addresses (as a kubelet
    /// updates its own Node's status); watchers see ADDED or MODIFIED.
    pub fn add_node(&self, name: &str, addresses: &[(&str, &str)]) {
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("node-{name}")},
            "status": {"addresses": addresses}
        });
        self.put_other("nodes", name, node);
    }

    /// Delete CSR `name`, as a human or the garbage collector would.
    pub fn delete_csr(&self, name: &str) {
        delete_csr(&self.shared, name);
    }

    pub fn delete_node(&self, name: &str) {
        let shared = self.shared.clone();
        shared.mutate(|state| {
            if let Some(node) = state.nodes.remove(name) {
                state.rv += 1;
                shared.record_other(state, "nodes", "DELETED", node);
            }
        });
    }

    /// Set the API server's addresses: Service default/kubernetes's ClusterIP and one
    /// EndpointSlice of it (a fresh fake has 10.96.0.1 and 192.0.2.10).
    pub fn set_api_server(&self, cluster_ip: &str, endpoints: &[&str]) {
        self.put_other("services", "kubernetes", api_server_service(cluster_ip));
        self.put_other("endpointslices", "kubernetes", api_server_slice(endpoints));
    }

    fn put_other(&self, resource: &'static str, name: &str, mut object: Value) {
        let shared = self.shared.clone();
        shared.mutate(|state| {
            state.rv += 1;
            object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            let map = match resource {
                "nodes" => &mut state.nodes,
                "services" => &mut state.services,
                _ => &mut state.endpoint_slices,
            };
            let kind = if map.insert(name.to_owned(), object.clone()).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            shared.record_other(state, resource, kind, object);
        });
    }

    /// A ConfigMap `namespace/name` holding `data`.
    pub fn put_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let configmap = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("cm-{name}"), "resourceVersion": "1"},
            "data": data,
        });
        self.shared.mutate(|state| {
            state
                .configmaps
                .insert(format!("{namespace}/{name}"), configmap)
        });
    }

    /// SubjectAccessReviews for `subresource` (nodeclient, selfnodeclient) allow this user or group,
    /// whatever the verb, group and resource (coarser than RBAC: see
    /// [`FakeApiServer::bind_cluster_role`]); allowed if either allows.
    pub fn allow_sar(&self, user_or_group: &str, subresource: &str) {
        self.shared.mutate(|state| {
            state
                .sar_allow
                .push((user_or_group.into(), subresource.into()))
        });
    }

    /// A ClusterRoleBinding of `subject` to a ClusterRole of `rules`: SubjectAccessReviews in
    /// every namespace and for cluster-scoped or all-namespace requests. Returns its name (the
    /// ClusterRole's too), as RBAC's reason names it.
    pub fn bind_cluster_role(&self, subject: RbacSubject, rules: &[PolicyRule]) -> String {
        self.bind(None, subject, rules)
    }

    /// A RoleBinding in `namespace` of `subject` to a Role of `rules`: only requests in that
    /// namespace, never a request with namespace "" (all namespaces, or cluster-scoped).
    /// Returns its name (the Role's too).
    pub fn bind_role(&self, namespace: &str, subject: RbacSubject, rules: &[PolicyRule]) -> String {
        self.bind(Some(namespace.into()), subject, rules)
    }

    fn bind(
        &self,
        namespace: Option<String>,
        subject: RbacSubject,
        rules: &[PolicyRule],
    ) -> String {
        self.shared.mutate(|state| {
            let kind = if namespace.is_some() {
                "role"
            } else {
                "cluster-role"
            };
            let name = format!("fake-{kind}-{}", state.bindings.len() + 1);
            state.bindings.push(Binding {
                name: name.clone(),
                namespace,
                subject,
                rules: rules.to_vec(),
            });
            name
        })
    }

    pub fn arm(&self, f: impl FnOnce(&mut Faults)) {
        self.shared.mutate(|state| f(&mut state.faults));
    }

    /// An API server restart: every open connection and watch is dropped at once; state and
    /// resourceVersions carry on, as they do with etcd behind a real API server, but the watch
    /// history does not: like kube-apiserver's new watch cache, a watch resuming from before
    /// the restart gets 410 Gone and must relist.
    pub fn restart(&self) {
        self.go_down();
        self.come_up();
    }

    /// The API server process dies: every connection drops and new ones are refused until
    /// [`FakeApiServer::come_up`].
    pub fn go_down(&self) {
        self.shared
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    /// The API server is back, with a new watch cache starting at the current resourceVersion.
    pub fn come_up(&self) {
        self.shared.mutate(|state| {
            state.history_floor = state.rv;
            state.history.clear();
            state.other_history.clear();
        });
        self.shared
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// etcd restored from an older backup: the server restarts with resourceVersions `by` behind
    /// what clients have seen. A watch resuming from a resourceVersion the server has not reached
    /// gets kube-apiserver's "Too large resource version" (504) until it relists.
    pub fn restore_older_backup(&self, by: u64) {
        self.go_down();
        self.shared
            .mutate(|state| state.rv = state.rv.saturating_sub(by));
        self.come_up();
    }

    /// Connections refused while down.
    pub fn refused(&self) -> usize {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most connections that were open at once, and how many are open now.
    pub fn connections(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (
            self.shared.max_open.load(SeqCst),
            self.shared.open.load(SeqCst),
        )
    }

    /// The most CSR writes (approval and status PUTs) the server was answering at once.
    pub fn max_csr_writes_in_flight(&self) -> usize {
        self.state.lock().expect("state").max_csr_writes_in_flight
    }

    /// SubjectAccessReviews asked so far.
    pub fn reviews_asked(&self) -> usize {
        self.state.lock().expect("state").reviews_asked
    }

    /// The spec (user, groups, uid, resourceAttributes...) of every SubjectAccessReview asked so
    /// far, in order.
    pub fn reviews(&self) -> Vec<Value> {
        self.state.lock().expect("state").reviews.clone()
    }

    /// Valid Event creations so far.
    pub fn events_posted(&self) -> usize {
        self.state.lock().expect("state").events_posted
    }

    /// How many lists of core/v1 Events the server has answered.
    pub fn event_lists(&self) -> usize {
        self.state.lock().expect("state").event_lists
    }

    /// CSRs whose approval writes succeeded, in the order the server took them.
    pub fn approvals_in_order(&self) -> Vec<String> {
        self.state.lock().expect("state").approvals_in_order.clone()
    }

    fn drop_connections(&self) {
        self.shared.restarts.send_modify(|n| *n += 1);
        for connection in self
            .shared
            .connections
            .lock()
            .expect("connections")
            .drain(..)
        {
            connection.abort();
        }
    }

    /// Replace a token: requests with the old one get 401 from now on.
    pub fn rotate_token(&self, old: &str, new: &str) {
        self.shared.mutate(|state| {
            if let Some(identity) = state.tokens.remove(old) {
                state.tokens.insert(new.into(), identity);
            }
        });
    }

    /// Another signer (kube-controller-manager's csrsigning) writes `certificate_pem` into an
    /// approved CSR's status. Not in `writes()`, which are csr-warden's.
    pub fn issue_as_another_signer(&self, name: &str, certificate_pem: &str) {
        self.shared.mutate(|state| {
            let Some(mut csr) = state.csrs.get(name).cloned() else {
                panic!("no CSR {name} to issue");
            };
            state.rv += 1;
            csr["status"]["certificate"] = json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                certificate_pem
            ));
            csr["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.csrs.insert(name.into(), csr.clone());
            self.shared.record(state, "MODIFIED", csr);
        });
    }

    /// The cluster CA's tls.crt and tls.key in `dir` (as if someone copied them into a Secret).
    pub fn cluster_ca_files(
        &self,
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("cluster-ca.crt");
        let key = dir.join("cluster-ca.key");
        std::fs::write(&cert, &self.ca_pem).expect("write cluster CA");
        std::fs::write(&key, &self.ca_key_pem).expect("write cluster CA key");
        (cert, key)
    }

    /// A CSR that was approved and issued long ago (for load tests: a cluster's finished CSRs).
    pub fn create_issued_csr(&self, token: &str, csr: Value, certificate_pem: &str) {
        let name = csr["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.create_csr(token, csr);
        self.shared.mutate(|state| {
            let Some(mut csr) = state.csrs.get(&name).cloned() else {
                return;
            };
            state.rv += 1;
            csr["status"] = json!({
                "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved",
                                "message": "approved long ago", "lastUpdateTime": "2026-11-22T00:00:00Z"}],
                "certificate": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, certificate_pem),
            });
            csr["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.csrs.insert(name.clone(), csr.clone());
            self.shared.record(state, "MODIFIED", csr);
        });
    }

    /// Someone labels a CSR: its resourceVersion moves and watchers see MODIFIED.
    pub fn label_csr(&self, name: &str, key: &str, value: &str) {
        self.shared.mutate(|state| {
            let Some(mut csr) = state.csrs.get(name).cloned() else {
                return;
            };
            state.rv += 1;
            csr["metadata"]["labels"][key] = json!(value);
            csr["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.csrs.insert(name.into(), csr.clone());
            self.shared.record(state, "MODIFIED", csr);
        });
    }

    /// How the CSRs have been read so far.
    pub fn csr_reads(&self) -> CsrReads {
        self.state.lock().expect("state").reads
    }

    /// Someone else denies a pending CSR (`kubectl certificate deny`).
    pub fn deny_as_human(&self, name: &str) {
        self.shared.mutate(|state| {
            let Some(mut csr) = state.csrs.get(name).cloned() else {
                return;
            };
            state.rv += 1;
            csr["status"]["conditions"] = json!([{"type": "Denied", "status": "True",
                "reason": "KubectlDeny", "message": "denied by a human",
                "lastUpdateTime": "2026-11-22T00:00:00Z"}]);
            csr["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.csrs.insert(name.into(), csr.clone());
            self.shared.record(state, "MODIFIED", csr);
        });
    }

    pub fn csr(&self, name: &str) -> Option<Value> {
        self.state.lock().expect("state").csrs.get(name).cloned()
    }

    /// Serve certificates.k8s.io/v1beta1 PodCertificateRequests from now on, as kube-apiserver
    /// 1.36 does with `--feature-gates=PodCertificateRequest=true
    /// --runtime-config=certificates.k8s.io/v1beta1=true` (off by default, as there).
    pub fn serve_pod_certificates(&self) {
        self.shared
            .mutate(|state| state.pod_certificates_served = true);
    }

    /// Create PodCertificateRequest `namespace/name` with `spec` (as the kubelet would, for a
    /// pod bound to its node); watchers see ADDED. The server sets uid, resourceVersion,
    /// creationTimestamp and generation, as kube-apiserver does.
    pub fn create_pcr(&self, namespace: &str, name: &str, spec: Value) -> Value {
        create_pcr(&self.shared, namespace, name, spec).expect("create pcr")
    }

    /// PodCertificateRequest `namespace/name` as stored now.
    pub fn pcr(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .expect("state")
            .pcrs
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Every write to a PodCertificateRequest's status so far, in order, with its answer
    /// (injected error answers come before a write is recorded, as for CSRs).
    pub fn pcr_writes(&self) -> Vec<PcrWrite> {
        self.state.lock().expect("state").pcr_writes.clone()
    }

    /// Status writes to `namespace/name` that the server stored (answered 200).
    pub fn pcr_status_writes(&self, namespace: &str, name: &str) -> usize {
        let key = format!("{namespace}/{name}");
        self.state
            .lock()
            .expect("state")
            .pcr_writes
            .iter()
            .filter(|w| w.pcr == key && w.outcome == 200)
            .count()
    }

    /// Pages of PodCertificateRequest lists served so far.
    pub fn pcr_list_pages(&self) -> usize {
        self.state.lock().expect("state").pcr_list_pages
    }

    /// Every CSR the server holds, by name.
    pub fn csrs(&self) -> Vec<Value> {
        self.state
            .lock()
            .expect("state")
            .csrs
            .values()
            .cloned()
            .collect()
    }

    /// How many requests were refused with 401 (unknown or rotated-away tokens).
    pub fn unauthorized(&self) -> usize {
        self.state.lock().expect("state").unauthorized
    }

    pub fn writes(&self) -> Vec<CsrWrite> {
        self.state.lock().expect("state").writes.clone()
    }

    /// Writes to every CSR but `csr` (a marker the test created to synchronise on).
    pub fn writes_except(&self, csr: &str) -> Vec<CsrWrite> {
        self.writes().into_iter().filter(|w| w.csr != csr).collect()
    }

    /// How many Events are about CSRs other than `csr`.
    pub fn events_except(&self, csr: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["regarding"]["name"] != csr)
            .count()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().expect("state").events.clone()
    }

    /// Events about one CSR (by regarding.name).
    pub fn events_for(&self, csr: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["regarding"]["name"] == csr)
            .collect()
    }

    /// Wait until `check` holds on the server's state. Wakes on every change, so this is
    /// synchronisation on observed state, not on time; the timeout only turns a hang into a
    /// failure with a message.
    pub async fn wait_for(&self, what: &str, check: impl FnMut(&FakeApiServer) -> bool) {
        self.wait_for_within(what, Duration::from_secs(60), check)
            .await
    }

    /// `wait_for` with a longer guard, for faults whose recovery takes real time (token reloads).
    pub async fn wait_for_within(
        &self,
        what: &str,
        guard: Duration,
        mut check: impl FnMut(&FakeApiServer) -> bool,
    ) {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + guard;
        loop {
            if check(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    // One lock at a time: the message must not deadlock on the state it shows.
                    let csrs = self.state.lock().expect("state").csrs.clone();
                    panic!(
                        "timed out waiting for: {what}\nCSRs: {csrs:#?}\nwrites: {:#?}",
                        self.writes()
                    )
                }
            }
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn status_error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// The Status reason kube-apiserver gives with `code`.
fn reason_of(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|q| {
            url_decode_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default()
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user a verified client certificate names: CN, and every O as a group (as the API
/// server's x509 authenticator reads it), plus system:authenticated.
fn identity_of_certificate(der: &[u8]) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let username = subject.iter_common_name().last()?.as_str().ok()?.to_owned();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    groups.push("system:authenticated".into());
    Some(Identity {
        uid: String::new(),
        username,
        groups,
    })
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    certificate_user: Option<Identity>,
) -> Response<Body> {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    let identity = {
        let mut state = shared.state.lock().expect("state");
        let identity = token
            .and_then(|t| state.tokens.get(&t).cloned())
            .or(certificate_user);
        if identity.is_none() {
            state.unauthorized += 1;
        }
        identity
    };
    let Some(identity) = identity else {
        return status_error(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    if std::env::var("FAKE_APISERVER_TRACE").is_ok() {
        eprintln!(
            "fake-apiserver: {} {} {:?}",
            request.method(),
            request.uri(),
            request.headers().get("content-type")
        );
    }
    let method = request.method().clone();
    let csr_write = (method == Method::PUT || method == Method::PATCH)
        && request.uri().path().contains("certificatesigningrequests");
    if csr_write {
        let mut state = shared.state.lock().expect("state");
        state.csr_writes_in_flight += 1;
        state.max_csr_writes_in_flight = state
            .max_csr_writes_in_flight
            .max(state.csr_writes_in_flight);
    }
    let response = handle_authenticated(&shared, request, identity, method).await;
    if csr_write {
        shared.state.lock().expect("state").csr_writes_in_flight -= 1;
    }
    response
}

async fn handle_authenticated(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    identity: Identity,
    method: Method,
) -> Response<Body> {
    let shared = shared.clone();
    let injected = {
        let mut state = shared.state.lock().expect("state");
        let delay = state.faults.delay;
        let path = request.uri().path();
        let fault = state.faults.errors.iter_mut().find(|f| {
            f.remaining > 0
                && f.method.as_ref().is_none_or(|m| *m == method)
                && path.contains(&f.path_contains)
        });
        let answer = fault.map(|f| {
            f.remaining -= 1;
            (f.status, f.retry_after_seconds)
        });
        (delay, answer)
    };
    if !injected.0.is_zero() {
        tokio::time::sleep(injected.0).await;
    }
    if let Some((status, retry_after)) = injected.1 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = status_error(code, reason_of(code), "injected fault");
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().expect("header"));
        }
        return response;
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // kube's list_metadata asks for metadata only, as client-go's metadata client does.
    let metadata_only = request
        .headers()
        .get("accept")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadataList"));
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let params = query(&request);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // What kube-apiserver answers any authenticated caller (system:public-info-viewer) once
    // it is up: csr-warden asks it after an outage before retrying what failed for want of it.
    if method == Method::GET && segments == ["readyz"] {
        let mut response = Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        response
            .headers_mut()
            .insert("content-type", "text/plain".parse().expect("header"));
        return response;
    }

    const CSRS: [&str; 4] = [
        "apis",
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
    ];
    match (&method, segments.as_slice()) {
        (&Method::GET, ["version"]) => full(
            StatusCode::OK,
            json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "platform": "linux/amd64"}),
        ),
        (&Method::GET, ["api"]) => full(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        (&Method::GET, ["apis"]) => {
            let served = shared.state.lock().expect("state").pod_certificates_served;
            full(StatusCode::OK, api_groups(served))
        }
        (_, ["apis", "certificates.k8s.io", "v1beta1", rest @ ..])
            if shared.state.lock().expect("state").pod_certificates_served =>
        {
            pod_certificates(&shared, rest, &method, &params, &content_type, &body)
        }
        (&Method::GET, ["api", "v1"]) => full(StatusCode::OK, core_resources()),
        (&Method::GET, ["apis", group, version]) => match group_resources(group, version) {
            Some(list) => full(StatusCode::OK, list),
            None => status_error(StatusCode::NOT_FOUND, "NotFound", "no such group"),
        },
        (&Method::GET, [a, b, c, d]) if [*a, *b, *c, *d] == CSRS => {
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch_csrs(&shared, &params)
            } else {
                list_csrs(&shared, &params, metadata_only)
            }
        }
        (&Method::POST, [a, b, c, d]) if [*a, *b, *c, *d] == CSRS => {
            match serde_json::from_slice::<Value>(&body) {
                Ok(csr) => match create_csr(&shared, &identity, csr) {
                    Ok(created) => full(StatusCode::CREATED, created),
                    Err(response) => response,
                },
                Err(e) => status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            }
        }
        (&Method::GET, [a, b, c, d, name]) if [*a, *b, *c, *d] == CSRS => {
            let mut state = shared.state.lock().expect("state");
            state.reads.gets += 1;
            match state.csrs.get(*name) {
                Some(csr) => full(StatusCode::OK, csr.clone()),
                None => not_found("certificatesigningrequests", name),
            }
        }
        (&Method::DELETE, [a, b, c, d, name]) if [*a, *b, *c, *d] == CSRS => {
            delete_csr(&shared, name)
        }
        (&Method::PUT, [a, b, c, d, name, sub]) if [*a, *b, *c, *d] == CSRS => {
            // kubectl's typed client sends built-in types as protobuf.
            let decoded = if body.starts_with(b"k8s\0") {
                protobuf::csr_from_envelope(&body[4..])
                    .ok_or_else(|| "undecodable protobuf".to_string())
            } else {
                serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
            };
            match decoded {
                Ok(mut update) => {
                    // As kube-apiserver's CSR strategies: a PUT to /approval or /status takes
                    // metadata from the body, so what a client leaves out is gone. (Our
                    // protobuf decoder reads no metadata: kubectl's bodies keep the stored one.)
                    if body.starts_with(b"k8s\0") {
                        update["metadata"]["__keep"] = json!(true);
                    }
                    write_subresource(&shared, name, sub, update)
                }
                Err(e) => status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            }
        }
        (&Method::PATCH, [a, b, c, d, name, sub]) if [*a, *b, *c, *d] == CSRS => {
            let merge = content_type.contains("merge-patch");
            match serde_json::from_slice::<Value>(&body) {
                Ok(patch) if merge => {
                    let current = shared.state.lock().expect("state").csrs.get(*name).cloned();
                    match current {
                        None => not_found("certificatesigningrequests", name),
                        Some(mut update) => {
                            merge_patch(&mut update, &patch);
                            // A patch without a resourceVersion applies to whatever is stored.
                            if patch["metadata"]["resourceVersion"].is_null() {
                                update["metadata"]
                                    .as_object_mut()
                                    .map(|m| m.remove("resourceVersion"));
                            }
                            write_subresource(&shared, name, sub, update)
                        }
                    }
                }
                Ok(_) => status_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the fake takes merge patches only",
                ),
                Err(e) => status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            }
        }
        (&Method::POST, ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            let mut review: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let slow = {
                let mut state = shared.state.lock().expect("state");
                state.reviews_asked += 1;
                state.reviews.push(review["spec"].clone());
                let node_review = review["spec"]["resourceAttributes"]["subresource"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("nodeclient"));
                if node_review {
                    state
                        .faults
                        .slow_reviews
                        .max(state.faults.slow_node_reviews)
                } else {
                    state.faults.slow_reviews
                }
            };
            if !slow.is_zero() {
                tokio::time::sleep(slow).await;
            }
            let spec = &review["spec"];
            let user = spec["user"].as_str().unwrap_or_default().to_owned();
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let attributes = &spec["resourceAttributes"];
            // As kube-apiserver's ValidateSubjectAccessReviewSpec.
            let invalid_spec = if attributes.is_object()
                && spec["nonResourceAttributes"].is_object()
            {
                Some(
                    "spec.nonResourceAttributes: Invalid value: cannot be specified in combination with resourceAttributes",
                )
            } else if !attributes.is_object() && !spec["nonResourceAttributes"].is_object() {
                Some(
                    "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            } else if user.is_empty() && groups.is_empty() {
                Some("spec.user: Invalid value: at least one of user or group must be specified")
            } else {
                None
            };
            if let Some(message) = invalid_spec {
                return invalid(message);
            }
            let subresource = attributes["subresource"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let state = shared.state.lock().expect("state");
            // kube-apiserver authorizes system:masters before any other authorizer, reason "".
            let masters = groups.iter().any(|g| g == "system:masters");
            let rbac = attributes
                .is_object()
                .then(|| {
                    rbac_allows(
                        &state.bindings,
                        &user,
                        &groups,
                        &ResourceRequest::from(attributes),
                    )
                })
                .flatten();
            // The older, coarser rule: a (user or group, subresource) pair, whatever the verb.
            let by_pair = state
                .sar_allow
                .iter()
                .any(|(who, sub)| *sub == subresource && (*who == user || groups.contains(who)));
            let mut status = json!({"allowed": masters || rbac.is_some() || by_pair});
            if let Some(reason) = rbac.filter(|_| !masters) {
                status["reason"] = json!(reason);
            }
            drop(state);
            review["status"] = status;
            full(StatusCode::CREATED, review)
        }
        (&Method::GET, ["api", "v1", "namespaces", namespace, "configmaps", name]) => {
            match shared
                .state
                .lock()
                .expect("state")
                .configmaps
                .get(&format!("{namespace}/{name}"))
            {
                Some(configmap) => full(StatusCode::OK, configmap.clone()),
                None => not_found("configmaps", name),
            }
        }
        (&Method::POST, ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]) => {
            // What `kubectl auth whoami` asks: the server's own view of the caller.
            full(
                StatusCode::CREATED,
                json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                    "metadata": {"creationTimestamp": null},
                    "status": {"userInfo": {"username": identity.username, "uid": identity.uid,
                                            "groups": identity.groups}},
                }),
            )
        }
        (&Method::GET, ["api", "v1", "nodes"]) => list_or_watch_other(&shared, "nodes", &params),
        (&Method::GET, ["api", "v1", "namespaces", "default", "services"]) => {
            list_or_watch_other(&shared, "services", &params)
        }
        (
            &Method::GET,
            [
                "apis",
                "discovery.k8s.io",
                "v1",
                "namespaces",
                "default",
                "endpointslices",
            ],
        ) => list_or_watch_other(&shared, "endpointslices", &params),
        (&Method::GET, ["api", "v1", "namespaces", "default", "services", name]) => {
            match shared.state.lock().expect("state").services.get(*name) {
                Some(service) => full(StatusCode::OK, service.clone()),
                None => not_found("services", name),
            }
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => {
            match shared.state.lock().expect("state").nodes.get(*name) {
                Some(node) => full(StatusCode::OK, node.clone()),
                None => not_found("nodes", name),
            }
        }
        (
            &Method::GET,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                namespace,
                "leases",
                name,
            ],
        ) => {
            match shared
                .state
                .lock()
                .expect("state")
                .leases
                .get(&format!("{namespace}/{name}"))
            {
                Some((lease, _)) => full(StatusCode::OK, lease.clone()),
                None => not_found("leases", name),
            }
        }
        (
            &Method::POST,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                namespace,
                "leases",
            ],
        ) => {
            let mut lease: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let name = lease["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let key = format!("{namespace}/{name}");
            shared.mutate(|state| {
                if state.leases.contains_key(&key) {
                    return status_error(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("leases \"{name}\" already exists"),
                    );
                }
                state.rv += 1;
                lease["metadata"]["namespace"] = json!(namespace);
                lease["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                lease["apiVersion"] = json!("coordination.k8s.io/v1");
                lease["kind"] = json!("Lease");
                let owner = lease["spec"]["holderIdentity"]
                    .as_str()
                    .map(|_| identity.username.clone());
                state.leases.insert(key, (lease.clone(), owner));
                full(StatusCode::CREATED, lease)
            })
        }
        (
            &Method::PATCH,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                namespace,
                "leases",
                name,
            ],
        ) => {
            let patch: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let manager = params.get("fieldManager").cloned().unwrap_or_default();
            let apply = content_type.contains("apply-patch");
            patch_lease(
                &shared,
                &format!("{namespace}/{name}"),
                name,
                &manager,
                apply,
                patch,
            )
        }
        (
            &Method::POST,
            [
                "apis",
                "events.k8s.io",
                "v1",
                "namespaces",
                namespace,
                "events",
            ],
        ) => {
            let mut event: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            // events.k8s.io/v1 validation, as kube-apiserver has it (in bytes).
            for (field, limit) in [("note", 1024), ("reason", 128), ("action", 128)] {
                let length = event[field].as_str().map_or(0, str::len);
                if length > limit {
                    return invalid(&format!(
                        "Event.events.k8s.io \"{}\" is invalid: {field}: Invalid value: \"\": can have at most {limit} characters",
                        event["metadata"]["name"].as_str().unwrap_or_default()
                    ));
                }
            }
            shared.mutate(|state| {
                state.events_posted += 1;
                state.rv += 1;
                event["metadata"]["namespace"] = json!(namespace);
                event["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                event["metadata"]["uid"] = json!(format!("event-{}", state.rv));
                state.events.push(event.clone());
            });
            full(StatusCode::CREATED, event)
        }
        (
            &Method::PATCH,
            [
                "apis",
                "events.k8s.io",
                "v1",
                "namespaces",
                _,
                "events",
                name,
            ],
        ) => {
            let patch: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let patched = shared.mutate(|state| {
                let event = state
                    .events
                    .iter_mut()
                    .find(|e| e["metadata"]["name"] == *name)?;
                if let Some(series) = patch.get("series") {
                    event["series"] = series.clone();
                }
                Some(event.clone())
            });
            match patched {
                Some(event) => full(StatusCode::OK, event),
                None => not_found("events", name),
            }
        }
        (&Method::GET, ["api", "v1", "events"])
        | (&Method::GET, ["api", "v1", "namespaces", _, "events"]) => {
            let namespace = segments.get(3).copied();
            shared.state.lock().expect("state").event_lists += 1;
            core_events(&shared, namespace, &params)
        }
        _ => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the fake API server does not serve {method} {path}"),
        ),
    }
}

/// Requests under /apis/certificates.k8s.io/v1beta1 (`rest` is the path after it), once
/// PodCertificateRequests are served: discovery, the cluster-wide list and watch, one request,
/// its status written by merge patch.
fn pod_certificates(
    shared: &Shared,
    rest: &[&str],
    method: &Method,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    match (method, rest) {
        (&Method::GET, []) => full(StatusCode::OK, pod_certificate_resources()),
        (&Method::GET, [PCRS]) => list_or_watch_other(shared, PCRS, params),
        (&Method::GET, ["namespaces", namespace, PCRS, name]) => {
            match shared
                .state
                .lock()
                .expect("state")
                .pcrs
                .get(&format!("{namespace}/{name}"))
            {
                Some(pcr) => full(StatusCode::OK, pcr.clone()),
                None => not_found("podcertificaterequests.certificates.k8s.io", name),
            }
        }
        (&Method::PATCH, ["namespaces", namespace, PCRS, name, "status"]) => {
            if !content_type.contains("merge-patch") {
                return status_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the fake takes merge patches only",
                );
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(patch) => patch_pcr_status(shared, namespace, name, &patch),
                Err(e) => status_error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            }
        }
        _ => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the fake API server does not serve {method} /apis/certificates.k8s.io/v1beta1/{}",
                rest.join("/")
            ),
        ),
    }
}

/// The spec fields kube-apiserver requires of a PodCertificateRequest.
const PCR_REQUIRED: [&str; 8] = [
    "signerName",
    "podName",
    "podUID",
    "serviceAccountName",
    "serviceAccountUID",
    "nodeName",
    "nodeUID",
    "stubPKCS10Request",
];

fn create_pcr(
    shared: &Shared,
    namespace: &str,
    name: &str,
    spec: Value,
) -> Result<Value, Response<Body>> {
    if let Some(missing) = PCR_REQUIRED
        .iter()
        .find(|field| spec[**field].as_str().unwrap_or_default().is_empty())
    {
        return Err(invalid(&format!("spec.{missing}: Required value")));
    }
    let key = format!("{namespace}/{name}");
    shared.mutate(|state| {
        if state.pcrs.contains_key(&key) {
            return Err(status_error(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("podcertificaterequests.certificates.k8s.io \"{name}\" already exists"),
            ));
        }
        state.rv += 1;
        // One second apart, in creation order, as CSRs (the API's timestamps have whole seconds).
        let created = time::OffsetDateTime::from_unix_timestamp(
            1_795_305_600 + i64::try_from(state.rv).unwrap_or(0),
        )
        .expect("timestamp")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
        let pcr = json!({
            "apiVersion": "certificates.k8s.io/v1beta1", "kind": "PodCertificateRequest",
            "metadata": {"name": name, "namespace": namespace,
                         "uid": format!("pcr-uid-{}", state.rv),
                         "resourceVersion": state.rv.to_string(),
                         "generation": 1, "creationTimestamp": created},
            "spec": spec,
            "status": {},
        });
        state.pcrs.insert(key, pcr.clone());
        shared.record_other(state, PCRS, "ADDED", pcr.clone());
        Ok(pcr)
    })
}

/// The terminal conditions of a PodCertificateRequest: once one is set, its status is final.
const PCR_TERMINAL: [&str; 3] = ["Issued", "Denied", "Failed"];

/// A merge patch of a PodCertificateRequest's status, as kube-apiserver takes one through the
/// `status` subresource: only status changes; a resourceVersion in the patch is a precondition
/// (409 Conflict if the request has changed since); a status with Issued, Denied or Failed is
/// final (422 for any change after). Recorded in `pcr_writes` with its answer.
fn patch_pcr_status(shared: &Shared, namespace: &str, name: &str, patch: &Value) -> Response<Body> {
    let key = format!("{namespace}/{name}");
    shared.mutate(|state| {
        let answer = patch_pcr_status_locked(shared, state, &key, name, patch);
        state.pcr_writes.push(PcrWrite {
            pcr: key.clone(),
            outcome: answer.status().as_u16(),
        });
        answer
    })
}

fn patch_pcr_status_locked(
    shared: &Shared,
    state: &mut State,
    key: &str,
    name: &str,
    patch: &Value,
) -> Response<Body> {
    let Some(current) = state.pcrs.get(key).cloned() else {
        return not_found("podcertificaterequests.certificates.k8s.io", name);
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
        && rv
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
    {
        return status_error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on podcertificaterequests.certificates.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let mut merged = current.clone();
    merge_patch(&mut merged, patch);
    let terminal = |pcr: &Value| {
        pcr["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| PCR_TERMINAL.iter().any(|t| c["type"] == *t) && c["status"] == "True")
            .count()
    };
    if terminal(&current) > 0 && merged["status"] != current["status"] {
        return invalid(&format!(
            "PodCertificateRequest.certificates.k8s.io \"{name}\" is invalid: status: Forbidden: immutable after PodCertificateRequest is issued, denied, or failed"
        ));
    }
    if terminal(&merged) > 1 {
        return invalid(&format!(
            "PodCertificateRequest.certificates.k8s.io \"{name}\" is invalid: status.conditions: Invalid value: at most one of Issued, Denied or Failed"
        ));
    }
    let mut next = current;
    next["status"] = merged["status"].clone();
    state.rv += 1;
    next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    state.pcrs.insert(key.to_owned(), next.clone());
    shared.record_other(state, PCRS, "MODIFIED", next.clone());
    full(StatusCode::OK, next)
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}

fn api_groups(pod_certificates_served: bool) -> Value {
    let group = |name: &str| {
        json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
               "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}})
    };
    let mut certificates = group("certificates.k8s.io");
    if pod_certificates_served {
        certificates["versions"]
            .as_array_mut()
            .expect("versions")
            .push(json!({"groupVersion": "certificates.k8s.io/v1beta1", "version": "v1beta1"}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        certificates, group("events.k8s.io"), group("authorization.k8s.io"),
        group("coordination.k8s.io"), group("authentication.k8s.io")
    ]})
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
           "verbs": verbs, "shortNames": short})
}

fn core_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [
        resource("nodes", "Node", false, &["get", "list", "watch"], &["no"]),
        resource("services", "Service", true, &["get", "list", "watch"], &["svc"]),
        resource("events", "Event", true, &["get", "list"], &["ev"]),
        resource("configmaps", "ConfigMap", true, &["get"], &["cm"]),
    ]})
}

/// certificates.k8s.io/v1beta1 as kube-apiserver 1.36 serves it with the PodCertificateRequest
/// gate and runtime-config on (ClusterTrustBundles are not modelled).
fn pod_certificate_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1",
           "groupVersion": "certificates.k8s.io/v1beta1", "resources": [
        resource(PCRS, "PodCertificateRequest", true,
                 &["create", "delete", "get", "list", "patch", "update", "watch"], &["pcr"]),
        resource("podcertificaterequests/status", "PodCertificateRequest", true,
                 &["get", "patch", "update"], &[]),
    ]})
}

fn group_resources(group: &str, version: &str) -> Option<Value> {
    if version != "v1" {
        return None;
    }
    let resources = match group {
        "certificates.k8s.io" => vec![
            resource(
                "certificatesigningrequests",
                "CertificateSigningRequest",
                false,
                &["create", "delete", "get", "list", "watch", "update"],
                &["csr"],
            ),
            resource(
                "certificatesigningrequests/approval",
                "CertificateSigningRequest",
                false,
                &["get", "update"],
                &[],
            ),
            resource(
                "certificatesigningrequests/status",
                "CertificateSigningRequest",
                false,
                &["get", "update"],
                &[],
            ),
        ],
        "coordination.k8s.io" => vec![resource(
            "leases",
            "Lease",
            true,
            &["create", "get", "update", "patch"],
            &[],
        )],
        "events.k8s.io" => vec![resource(
            "events",
            "Event",
            true,
            &["create", "get", "list", "patch"],
            &["ev"],
        )],
        "authentication.k8s.io" => vec![resource(
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &["create"],
            &[],
        )],
        "authorization.k8s.io" => vec![resource(
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
            &["create"],
            &[],
        )],
        _ => return None,
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("{group}/{version}"), "resources": resources}))
}

/// One page of a list, paginated as kube-apiserver does with `limit` (capped by the
/// `page_limit` fault, as a real server may return fewer): every page of one list reads the same
/// snapshot, taken by `snapshot` for the first page, and the list's resourceVersion is the
/// snapshot's. The page, and the list's metadata (resourceVersion, continue).
fn page_of(
    state: &mut State,
    params: &HashMap<String, String>,
    snapshot: impl FnOnce(&State) -> Vec<Value>,
) -> Result<(Vec<Value>, Value), Response<Body>> {
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let limit = match (limit, state.faults.page_limit) {
        (Some(l), Some(cap)) => Some(l.min(cap)),
        (l, cap) => l.or(cap),
    };
    let (snapshot_rv, items, offset) = match params.get("continue") {
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(id, offset)| Some((id.parse().ok()?, offset.parse().ok()?)));
            let Some((id, offset)) = parsed else {
                return Err(status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "bad continue token",
                ));
            };
            let Some((rv, items)) = state.list_snapshots.get(&id).cloned() else {
                return Err(status_error(
                    StatusCode::GONE,
                    "Expired",
                    "continue token expired",
                ));
            };
            (rv, items, offset)
        }
        None => (state.rv, Arc::new(snapshot(state)), 0usize),
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<Value> = items[offset.min(end)..end].to_vec();
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if end < items.len() {
        let id = match params.get("continue") {
            Some(token) => token
                .split_once(':')
                .and_then(|(id, _)| id.parse().ok())
                .unwrap_or(0),
            None => {
                state.next_snapshot += 1;
                let id = state.next_snapshot;
                state
                    .list_snapshots
                    .insert(id, (snapshot_rv, items.clone()));
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
    }
    Ok((page, metadata))
}

/// A list of CSRs, paged ([`page_of`]).
fn list_csrs(
    shared: &Shared,
    params: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let mut state = shared.state.lock().expect("state");
    if metadata_only {
        state.reads.metadata_pages += 1;
    } else if params
        .get("fieldSelector")
        .is_some_and(|selector| selector.contains("spec.signerName="))
    {
        state.reads.whole_pages_by_signer += 1;
    }
    // spec.signerName is a field selector CSRs support (and all csr-warden's resync uses).
    let signer = params.get("fieldSelector").and_then(|selector| {
        selector
            .split(',')
            .find_map(|term| term.strip_prefix("spec.signerName="))
            .map(str::to_owned)
    });
    let listed = page_of(&mut state, params, |state| {
        state
            .csrs
            .values()
            .filter(|csr| {
                signer
                    .as_ref()
                    .is_none_or(|s| csr["spec"]["signerName"] == s.as_str())
            })
            .cloned()
            .collect()
    });
    let (page, metadata) = match listed {
        Ok(listed) => listed,
        Err(response) => return response,
    };
    if metadata_only {
        let items: Vec<Value> = page
            .iter()
            .map(|csr| {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": csr["metadata"]})
            })
            .collect();
        return full(
            StatusCode::OK,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                   "metadata": metadata, "items": items}),
        );
    }
    full(
        StatusCode::OK,
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList",
               "metadata": metadata, "items": page}),
    )
}

/// What kube-apiserver's watch cache sends after waiting for a resourceVersion it has not
/// reached (etcd restored from an older backup).
fn too_large_resource_version(since: u64, current: u64) -> Response<Body> {
    let error = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "reason": "Timeout", "code": 504,
        "message": format!("Too large resource version: {since}, current: {current}"),
        "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": 1}}});
    full(StatusCode::OK, error)
}

/// What kube-apiserver sends when the resourceVersion has been compacted away, or is older
/// than a restarted server's new watch cache.
fn too_old_resource_version(since: u64) -> Response<Body> {
    let error = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
        "message": format!("too old resource version: {since}")}});
    full(StatusCode::OK, error)
}

fn watch_csrs(shared: &Shared, params: &HashMap<String, String>) -> Response<Body> {
    let since: u64 = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    // Subscribe under the lock so no event falls between the backlog and the live stream.
    let (backlog, receiver, gone, cut, stall, too_large, current) = {
        let mut state = shared.state.lock().expect("state");
        let floor = state.history_floor;
        let current = state.rv;
        let too_large = since > current;
        let backlog: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        let faults = &mut state.faults;
        let gone = faults.gone_watches > 0 || since < floor;
        faults.gone_watches = faults.gone_watches.saturating_sub(1);
        let stall = !gone && faults.stall_watches > 0;
        faults.stall_watches = faults.stall_watches.saturating_sub(usize::from(stall));
        let cut = (!gone && faults.cut_watches > 0).then_some(faults.cut_after_events);
        if cut.is_some() {
            faults.cut_watches -= 1;
        }
        (
            backlog,
            shared.events_tx.subscribe(),
            gone,
            cut,
            stall,
            too_large,
            current,
        )
    };
    if stall {
        // Headers, then silence: a connection whose other end is gone without a word.
        let silence = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(silence)));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return response;
    }
    if too_large {
        return too_large_resource_version(since, current);
    }
    if gone {
        return too_old_resource_version(since);
    }
    let last_sent = backlog.last().map(|e| e.rv).unwrap_or(since);
    let live = futures::stream::unfold((receiver, last_sent), |(mut receiver, last)| async move {
        loop {
            match receiver.recv().await {
                Ok(event) if event.rv > last => {
                    let rv = event.rv;
                    return Some((event, (receiver, rv)));
                }
                Ok(_) => continue,
                // A watcher that falls this far behind is closed, as kube-apiserver does; the
                // client re-watches from its last resourceVersion and misses nothing.
                Err(_) => return None,
            }
        }
    });
    let lines = futures::stream::iter(backlog)
        .chain(live)
        .map(|event| json!({"type": event.kind, "object": event.object}).to_string() + "\n");
    let lines: futures::stream::BoxStream<'static, String> = match cut {
        // Cut mid-event: N whole events, then half a line, then the connection ends.
        Some(whole) => lines
            .take(whole + 1)
            .enumerate()
            .map(move |(i, line)| {
                if i < whole {
                    line
                } else {
                    line[..line.len() / 2].to_owned()
                }
            })
            .boxed(),
        None => lines.boxed(),
    };
    let mut restarts = shared.restarts.subscribe();
    restarts.mark_unchanged();
    let stream = lines
        .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line))))
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)))
        .take_until(async move {
            let _ = restarts.changed().await;
        });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn create_csr(
    shared: &Shared,
    identity: &Identity,
    mut csr: Value,
) -> Result<Value, Response<Body>> {
    let Some(name) = csr["metadata"]["name"].as_str().map(str::to_owned) else {
        return Err(status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        ));
    };
    if csr["spec"]["signerName"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.signerName: Required value",
        ));
    }
    shared.mutate(|state| {
        if state.csrs.contains_key(&name) {
            return Err(status_error(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!(
                    "certificatesigningrequests.certificates.k8s.io \"{name}\" already exists"
                ),
            ));
        }
        state.rv += 1;
        let metadata = &mut csr["metadata"];
        metadata["uid"] = json!(format!("csr-uid-{}", state.rv));
        metadata["resourceVersion"] = json!(state.rv.to_string());
        // One second apart, in creation order (the API's timestamps have whole seconds).
        let created = time::OffsetDateTime::from_unix_timestamp(
            1_795_305_600 + i64::try_from(state.rv).unwrap_or(0),
        )
        .expect("timestamp");
        metadata["creationTimestamp"] = json!(
            created
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format")
        );
        // The API server, not the client, says who asked.
        csr["spec"]["username"] = json!(identity.username);
        csr["spec"]["groups"] = json!(identity.groups);
        csr["spec"]["uid"] = json!(identity.uid);
        if csr.get("status").is_none() {
            csr["status"] = json!({});
        }
        csr["apiVersion"] = json!("certificates.k8s.io/v1");
        csr["kind"] = json!("CertificateSigningRequest");
        state.csrs.insert(name.clone(), csr.clone());
        if state.faults.hide_creations > 0 {
            state.faults.hide_creations -= 1;
        } else {
            shared.record(state, "ADDED", csr.clone());
        }
        Ok(csr)
    })
}

fn delete_csr(shared: &Shared, name: &str) -> Response<Body> {
    shared.mutate(|state| match state.csrs.remove(name) {
        Some(csr) => {
            state.rv += 1;
            if state.faults.hide_deletions > 0 {
                state.faults.hide_deletions -= 1;
            } else {
                shared.record(state, "DELETED", csr.clone());
            }
            full(StatusCode::OK, csr)
        }
        None => not_found("certificatesigningrequests", name),
    })
}

fn conditions(csr: &Value) -> Vec<Value> {
    csr["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_condition(list: &[Value], kind: &str) -> bool {
    list.iter().any(|c| c["type"] == kind)
}

/// PUT .../approval and .../status, with kube-apiserver's rules.
fn write_subresource(
    shared: &Shared,
    name: &str,
    subresource: &str,
    update: Value,
) -> Response<Body> {
    shared.mutate(|state| {
        let approving = subresource == "approval";
        let outcome = write_subresource_locked(shared, state, name, subresource, update);
        if approving && outcome.status() == StatusCode::OK {
            state.approvals_in_order.push(name.into());
        }
        state.writes.push(CsrWrite {
            csr: name.into(),
            subresource: subresource.into(),
            outcome: outcome.status().as_u16(),
            at: std::time::Instant::now(),
        });
        outcome
    })
}

fn write_subresource_locked(
    shared: &Shared,
    state: &mut State,
    name: &str,
    subresource: &str,
    update: Value,
) -> Response<Body> {
    let Some(current) = state.csrs.get(name).cloned() else {
        return not_found("certificatesigningrequests", name);
    };
    let armed = match subresource {
        "approval" => &mut state.faults.conflict_approvals,
        "status" => &mut state.faults.conflict_status,
        _ => return status_error(StatusCode::NOT_FOUND, "NotFound", "no such subresource"),
    };
    if *armed > 0 {
        *armed -= 1;
        // Another writer touched the object: its resourceVersion moves on.
        state.rv += 1;
        let mut bumped = current.clone();
        bumped["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.csrs.insert(name.into(), bumped.clone());
        shared.record(state, "MODIFIED", bumped);
        return conflict(name);
    }
    if let Some(rv) = update["metadata"]["resourceVersion"].as_str()
        && rv
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
    {
        return conflict(name);
    }
    let old = conditions(&current);
    let new = conditions(&update);
    // Conditions may be added, never removed; at most one of each type.
    for kind in ["Approved", "Denied", "Failed"] {
        let count = new.iter().filter(|c| c["type"] == kind).count();
        if count > 1 {
            return invalid(&format!("status.conditions: Duplicate value: \"{kind}\""));
        }
        if has_condition(&old, kind) && count == 0 {
            return invalid(&format!(
                "status.conditions: Forbidden: updates may not remove a condition of type \"{kind}\""
            ));
        }
    }
    if has_condition(&new, "Approved") && has_condition(&new, "Denied") {
        return invalid("status.conditions: Approved and Denied conditions are mutually exclusive");
    }
    let mut next = current.clone();
    if update["metadata"]["__keep"].is_null() {
        for field in ["annotations", "labels", "finalizers"] {
            match update["metadata"].get(field) {
                Some(value) if !value.is_null() => next["metadata"][field] = value.clone(),
                _ => {
                    if let Some(metadata) = next["metadata"].as_object_mut() {
                        metadata.remove(field);
                    }
                }
            }
        }
    }
    match subresource {
        "approval" => {
            // Only Approved/Denied may change here.
            next["status"]["conditions"] = json!(new);
        }
        _ => {
            for kind in ["Approved", "Denied"] {
                if has_condition(&new, kind) != has_condition(&old, kind) {
                    return invalid(&format!(
                        "status.conditions: Forbidden: {kind} may only be set through /approval"
                    ));
                }
            }
            let old_cert = current["status"]["certificate"]
                .as_str()
                .unwrap_or_default();
            let new_cert = update["status"]["certificate"].as_str().unwrap_or_default();
            if !old_cert.is_empty() && old_cert != new_cert {
                return invalid(
                    "status.certificate: Forbidden: updates may not modify existing certificate content",
                );
            }
            if !new_cert.is_empty() && state.faults.refuse_certificates.iter().any(|n| n == name) {
                return invalid_certificate(name, INVALID_CERTIFICATE);
            }
            next["status"]["conditions"] = json!(new);
            if !new_cert.is_empty() {
                next["status"]["certificate"] = json!(new_cert);
            }
        }
    }
    state.rv += 1;
    next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
    state.csrs.insert(name.into(), next.clone());
    shared.record(state, "MODIFIED", next.clone());
    full(StatusCode::OK, next)
}

fn conflict(name: &str) -> Response<Body> {
    status_error(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on certificatesigningrequests.certificates.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

fn invalid(message: &str) -> Response<Body> {
    status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

/// kube-apiserver's 422 for a status.certificate its validation cannot parse (a field.Invalid
/// whose value it shows as "<certificate data>").
fn invalid_certificate(name: &str, why: &str) -> Response<Body> {
    let cause = format!("Invalid value: \"<certificate data>\": {why}");
    full(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!(
                   "CertificateSigningRequest.certificates.k8s.io \"{name}\" is invalid: status.certificate: {cause}"
               ),
               "reason": "Invalid",
               "details": {"name": name, "group": "certificates.k8s.io",
                           "kind": "CertificateSigningRequest",
                           "causes": [{"reason": "FieldValueInvalid", "message": cause,
                                       "field": "status.certificate"}]},
               "code": 422}),
    )
}

/// events.k8s.io/v1 Events shown as core/v1 Events, as a real API server does, for kubectl.
fn core_events(
    shared: &Shared,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let selector: Vec<(String, String)> = params
        .get("fieldSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let state = shared.state.lock().expect("state");
    let items: Vec<Value> = state
        .events
        .iter()
        .filter(|e| namespace.is_none_or(|ns| e["metadata"]["namespace"] == ns))
        .map(|e| {
            let count = e["series"]["count"].as_i64().unwrap_or(1);
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": e["metadata"],
                "involvedObject": e["regarding"],
                "reason": e["reason"],
                "message": e["note"],
                "type": e["type"],
                "count": count,
                "source": {"component": e["reportingController"]},
                "reportingComponent": e["reportingController"],
                "reportingInstance": e["reportingInstance"],
                "firstTimestamp": e["eventTime"],
                "lastTimestamp": e["eventTime"],
                "eventTime": e["eventTime"],
                "action": e["action"],
            })
        })
        .filter(|e| {
            selector.iter().all(|(key, value)| {
                let field = key.split('.').fold(e, |v, part| &v[part]);
                field.as_str().unwrap_or_default() == value
            })
        })
        .collect();
    full(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "EventList", "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
    )
}

/// The few protobuf fields of a CSR that an approval or status write carries (field numbers from
/// k8s.io/api/certificates/v1/generated.proto), enough to understand kubectl's writes.
mod protobuf {
    use serde_json::{Value, json};

    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// (field number, bytes) of each length-delimited field; other wire types are skipped.
    fn fields(mut buf: &[u8]) -> Option<Vec<(u64, &[u8])>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            match key & 7 {
                0 => {
                    varint(&mut buf)?;
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    if buf.len() < len {
                        return None;
                    }
                    out.push((key >> 3, &buf[..len]));
                    buf = &buf[len..];
                }
                _ => return None,
            }
        }
        Some(out)
    }

    fn string(fields: &[(u64, &[u8])], number: u64) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
    }

    pub fn csr_from_envelope(envelope: &[u8]) -> Option<Value> {
        let unknown = fields(envelope)?;
        let raw = unknown.iter().find(|(n, _)| *n == 2)?.1;
        let csr = fields(raw)?;
        let metadata = fields(csr.iter().find(|(n, _)| *n == 1)?.1)?;
        let mut conditions = Vec::new();
        let mut certificate = None;
        if let Some((_, status)) = csr.iter().find(|(n, _)| *n == 3) {
            for (number, value) in fields(status)? {
                match number {
                    1 => {
                        let c = fields(value)?;
                        conditions.push(json!({
                            "type": string(&c, 1), "status": string(&c, 6),
                            "reason": string(&c, 2), "message": string(&c, 3),
                        }));
                    }
                    2 => {
                        use base64::Engine;
                        certificate = Some(base64::engine::general_purpose::STANDARD.encode(value));
                    }
                    _ => {}
                }
            }
        }
        let mut status = json!({"conditions": conditions});
        if let Some(certificate) = certificate {
            status["certificate"] = json!(certificate);
        }
        Some(json!({
            "metadata": {"name": string(&metadata, 1), "resourceVersion": string(&metadata, 6)},
            "status": status,
        }))
    }
}

/// PATCH of a Lease: merge/strategic patches set or (with null) remove spec fields; an apply
/// patch that would take spec.holderIdentity from another field manager is a 409 Conflict, as
/// server-side apply does without force.
fn patch_lease(
    shared: &Shared,
    key: &str,
    name: &str,
    manager: &str,
    apply: bool,
    patch: Value,
) -> Response<Body> {
    shared.mutate(|state| {
        let Some((lease, owner)) = state.leases.get(key).cloned() else {
            return not_found("leases", name);
        };
        let empty = serde_json::Map::new();
        let changes = patch["spec"].as_object().unwrap_or(&empty);
        if apply && let Some(holder) = changes.get("holderIdentity").and_then(Value::as_str) {
            let current = lease["spec"]["holderIdentity"].as_str();
            if owner.as_deref().is_some_and(|o| o != manager)
                && current.is_some_and(|c| c != holder)
            {
                return status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Apply failed with 1 conflict: conflict with \"{}\": .spec.holderIdentity",
                        owner.unwrap_or_default()
                    ),
                );
            }
        }
        let mut next = lease.clone();
        if !next["spec"].is_object() {
            next["spec"] = json!({});
        }
        let mut next_owner = owner;
        for (field, value) in changes {
            if value.is_null() {
                if let Some(spec) = next["spec"].as_object_mut() {
                    spec.remove(field);
                }
                if field == "holderIdentity" {
                    next_owner = None;
                }
            } else {
                next["spec"][field] = value.clone();
                if field == "holderIdentity" {
                    next_owner = Some(manager.to_owned());
                }
            }
        }
        state.rv += 1;
        next["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state
            .leases
            .insert(key.to_owned(), (next.clone(), next_owner));
        full(StatusCode::OK, next)
    })
}

fn api_server_service(cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "kubernetes", "namespace": "default", "uid": "svc-kubernetes"},
           "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}})
}

fn api_server_slice(endpoints: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "kubernetes", "namespace": "default", "uid": "eps-kubernetes",
                        "labels": {"kubernetes.io/service-name": "kubernetes"}},
           "addressType": "IPv4",
           "endpoints": endpoints.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
           "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
}

/// Whether `object` passes the request's fieldSelector (metadata.name=X only) and
/// labelSelector (k=v terms only): what csr-warden's watches use.
fn selected(object: &Value, params: &HashMap<String, String>) -> bool {
    let by_name = params.get("fieldSelector").is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some(("metadata.name", name)) => object["metadata"]["name"] == name,
            _ => true,
        })
    });
    let by_label = params.get("labelSelector").is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some((key, value)) => object["metadata"]["labels"][key] == value,
            None => true,
        })
    });
    by_name && by_label
}

/// The stored objects of a resource served through [`list_or_watch_other`].
fn other_map<'a>(state: &'a State, resource: &str) -> &'a BTreeMap<String, Value> {
    match resource {
        "nodes" => &state.nodes,
        "services" => &state.services,
        PCRS => &state.pcrs,
        _ => &state.endpoint_slices,
    }
}

/// List or watch Nodes, Services, EndpointSlices or PodCertificateRequests (every namespace).
/// A list is paged as CSR lists are ([`page_of`], with the `page_limit` fault); a watch sends
/// what happened after the resourceVersion, then live events, and is refused as
/// kube-apiserver's watch cache refuses it: 410 Gone from before a restart
/// ([`FakeApiServer::come_up`]), "Too large resource version" from beyond the server's
/// ([`FakeApiServer::restore_older_backup`]).
fn list_or_watch_other(
    shared: &Shared,
    resource: &'static str,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let mut state = shared.state.lock().expect("state");
        if resource == PCRS {
            state.pcr_list_pages += 1;
        }
        let listed = page_of(&mut state, params, |state| {
            other_map(state, resource)
                .values()
                .filter(|o| selected(o, params))
                .cloned()
                .collect()
        });
        let (items, metadata) = match listed {
            Ok(listed) => listed,
            Err(response) => return response,
        };
        let (api_version, kind) = match resource {
            "nodes" => ("v1", "NodeList"),
            "services" => ("v1", "ServiceList"),
            PCRS => ("certificates.k8s.io/v1beta1", "PodCertificateRequestList"),
            _ => ("discovery.k8s.io/v1", "EndpointSliceList"),
        };
        return full(
            StatusCode::OK,
            json!({"apiVersion": api_version, "kind": kind,
                   "metadata": metadata, "items": items}),
        );
    }
    let from: Option<u64> = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv > 0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    // Subscribe under the lock so no event falls between the backlog and the live stream.
    let (backlog, receiver, since) = {
        let state = shared.state.lock().expect("state");
        // Without a resourceVersion (or "0") a watch starts from now.
        let since = from.unwrap_or(state.rv);
        if since > state.rv {
            return too_large_resource_version(since, state.rv);
        }
        if since < state.history_floor {
            return too_old_resource_version(since);
        }
        let backlog: Vec<WatchEvent> = state
            .other_history
            .iter()
            .filter(|(r, e)| *r == resource && e.rv > since)
            .map(|(_, e)| e.clone())
            .collect();
        (backlog, shared.other_tx.subscribe(), since)
    };
    let params = params.clone();
    let live = futures::stream::unfold(receiver, move |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok((r, event)) if r == resource && event.rv > since => {
                    return Some((event, receiver));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    });
    let mut restarts = shared.restarts.subscribe();
    restarts.mark_unchanged();
    let stream = futures::stream::iter(backlog)
        .chain(live)
        .filter(move |event| futures::future::ready(selected(&event.object, &params)))
        .map(|event| {
            let line = json!({"type": event.kind, "object": event.object}).to_string() + "\n";
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        })
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)))
        .take_until(async move {
            let _ = restarts.changed().await;
        });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

/// RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("object");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
