//! The facts the cluster answers that a CSR cannot tell about itself: SubjectAccessReviews for
//! kubelet client requests; for kubelet serving requests, the requesting Node's addresses, the
//! other Nodes' addresses and the API server's own in-cluster addresses.
//!
//! The controller keeps Nodes, Service `default/kubernetes` and its EndpointSlices in indexes fed
//! by watches (started the first time a serving request needs them), trimmed to names and
//! addresses, so a kubelet serving CSR costs no request and 5,000 Nodes stay small. `check`
//! fills the same indexes from one list. Both ask through [`Facts::lookup`], so an operator's
//! check sees what the controller saw.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::policy::{
    AddressClaim, ClusterFacts, CsrView, FactsNeeded, NodeLookup, PrivilegeCheck, normalize_dns,
};

mod privilege;
use crate::kube::request::{PAGE_SIZE, REQUEST_TIMEOUT, REVIEW_TIMEOUT, list_paged, within};
use crate::kube::watch;

/// Where the API server's Service lives, in every cluster.
const API_SERVER_NAMESPACE: &str = "default";
const API_SERVER_SERVICE: &str = "kubernetes";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot {what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The watches behind the indexes have not completed their first list yet (or cannot: see
    /// the warnings logged for them). Transient: the CSR is tried again.
    #[error(
        "the {0} are not known yet (their watch has not synced; if this lasts, check csr-warden's RBAC for nodes, services and endpointslices)"
    )]
    NotSynced(&'static str),
}

impl FactsError {
    /// The API error underneath, if any (for telling transient from permanent).
    pub fn kube(&self) -> Option<&kube::Error> {
        match self {
            FactsError::Kube { source, .. } => Some(source),
            FactsError::NotSynced(_) => None,
        }
    }
}

/// How a Node address or a SAN is compared: IPs canonical, names lower-case without the
/// trailing dot.
fn address_key(address: &str) -> String {
    match address.trim().parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => normalize_dns(address),
    }
}

/// Every Node's addresses, by Node and by address.
#[derive(Debug, Default)]
struct NodeTable {
    by_node: HashMap<String, Vec<String>>,
    by_address: HashMap<String, BTreeSet<String>>,
}

impl NodeTable {
    /// Put `node`'s addresses in; true when they differ from what was there.
    fn set(&mut self, node: &str, addresses: Vec<String>) -> bool {
        if self.by_node.get(node) == Some(&addresses) {
            return false;
        }
        self.remove(node);
        for address in &addresses {
            self.by_address
                .entry(address_key(address))
                .or_default()
                .insert(node.to_owned());
        }
        self.by_node.insert(node.to_owned(), addresses);
        true
    }

    fn remove(&mut self, node: &str) -> bool {
        let Some(old) = self.by_node.remove(node) else {
            return false;
        };
        for address in old {
            let key = address_key(&address);
            if let Some(nodes) = self.by_address.get_mut(&key) {
                nodes.remove(node);
                if nodes.is_empty() {
                    self.by_address.remove(&key);
                }
            }
        }
        true
    }
}

/// What changed in the facts, for re-deciding exactly the CSRs that waited on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactChange {
    /// A (re)list completed, or the API server's addresses changed: anything may have changed.
    Everything,
    /// This Node's addresses changed, or it came or went.
    Node(String),
}

/// The Nodes' names and addresses (nothing else of them is kept).
#[derive(Debug, Default)]
pub struct NodeIndex {
    table: RwLock<NodeTable>,
    synced: AtomicBool,
}

impl NodeIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, NodeTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, NodeTable> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// How many Nodes are indexed.
    pub fn len(&self) -> usize {
        self.read().by_node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn replace(&self, nodes: impl IntoIterator<Item = (String, Vec<String>)>) {
        let mut table = NodeTable::default();
        for (name, addresses) in nodes {
            table.set(&name, addresses);
        }
        *self.write() = table;
        self.synced.store(true, Ordering::Release);
    }

    fn lookup(&self, node: &str) -> NodeLookup {
        match self.read().by_node.get(node) {
            None => NodeLookup::Missing,
            Some(addresses) => NodeLookup::Addresses(addresses.clone()),
        }
    }

    /// Every Node but `node` that lists one of `sans`, with the address it lists.
    fn claims(&self, node: &str, sans: &[String]) -> Vec<AddressClaim> {
        let table = self.read();
        let mut claims = Vec::new();
        for san in sans {
            let key = address_key(san);
            for other in table.by_address.get(&key).into_iter().flatten() {
                if other == node {
                    continue;
                }
                let listed = table
                    .by_node
                    .get(other)
                    .and_then(|addresses| addresses.iter().find(|a| address_key(a) == key))
                    .cloned()
                    .unwrap_or_else(|| san.clone());
                claims.push(AddressClaim {
                    node: other.clone(),
                    address: listed,
                });
            }
        }
        claims
    }
}

/// A Node trimmed to what the policy reads: every entry of status.addresses, whatever its type.
fn node_addresses(node: &Node) -> Vec<String> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addresses| addresses.iter().map(|a| a.address.clone()).collect())
        .unwrap_or_default()
}

/// The API server's in-cluster addresses: Service default/kubernetes's ClusterIPs and the
/// addresses of its EndpointSlices.
#[derive(Debug, Default)]
pub struct ApiServerIndex {
    state: RwLock<ApiServerState>,
}

#[derive(Debug, Default)]
struct ApiServerState {
    cluster_ips: Option<Vec<IpAddr>>,
    /// By EndpointSlice name; None until the first list completed.
    endpoints: Option<BTreeMap<String, Vec<IpAddr>>>,
}

impl ApiServerIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ApiServerState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every address, once both the Service and its EndpointSlices are known.
    pub fn addresses(&self) -> Option<Vec<IpAddr>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut all: BTreeSet<IpAddr> = state.cluster_ips.clone()?.into_iter().collect();
        all.extend(state.endpoints.as_ref()?.values().flatten().copied());
        Some(all.into_iter().collect())
    }

    fn set_service(&self, service: Option<&Service>) {
        self.write().cluster_ips = Some(service.map(cluster_ips).unwrap_or_default());
    }

    fn set_slices<'a>(&self, slices: impl IntoIterator<Item = &'a EndpointSlice>) {
        self.write().endpoints = Some(
            slices
                .into_iter()
                .map(|slice| (slice.name_any(), slice_addresses(slice)))
                .collect(),
        );
    }

    fn apply_slice(&self, slice: &EndpointSlice, deleted: bool) {
        let mut state = self.write();
        let endpoints = state.endpoints.get_or_insert_with(BTreeMap::new);
        if deleted {
            endpoints.remove(&slice.name_any());
        } else {
            endpoints.insert(slice.name_any(), slice_addresses(slice));
        }
    }
}

fn parse_ips<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    texts
        .into_iter()
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect()
}

fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let mut ips = parse_ips(spec.cluster_ips.iter().flatten());
    ips.extend(parse_ips(spec.cluster_ip.iter()));
    ips.sort();
    ips.dedup();
    ips
}

fn slice_addresses(slice: &EndpointSlice) -> Vec<IpAddr> {
    parse_ips(
        slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.iter()),
    )
}

/// How the indexes are filled: by watches (the controller), or by one list (`check`).
enum Feed {
    Watch {
        /// When the watches were started; None until then.
        started: Mutex<Option<tokio::time::Instant>>,
        on_change: Arc<dyn Fn(FactChange) + Send + Sync>,
        /// Woken on every sync and change of the indexes.
        changed: Arc<tokio::sync::Notify>,
    },
    List {
        loaded: tokio::sync::OnceCell<()>,
    },
}

/// The cluster's answers, for the controller and for `check`.
pub struct Facts {
    client: Client,
    nodes: Arc<NodeIndex>,
    api_server: Arc<ApiServerIndex>,
    feed: Feed,
    /// Recent SubjectAccessReview answers, by requester identity and subresource.
    reviews: Mutex<HashMap<ReviewKey, (bool, std::time::Instant)>>,
    /// Recent answers of the privilege ceiling, by certificate identity.
    privilege: privilege::PrivilegeAnswers,
}

/// How long a SubjectAccessReview's answer is reused for the same requester identity: a
/// bootstrap storm is many CSRs from one identity, and one review serves them all. So a
/// binding revoked (or granted) this moment is honoured for up to this long.
pub const REVIEW_REUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after the watches behind the indexes start a kubelet serving CSR's decision waits
/// for their first sync (a few list requests) rather than failing and waiting to be requeued.
pub const FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who asks, exactly as the review is asked: user, uid, groups, and what for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReviewKey {
    user: String,
    uid: Option<String>,
    groups: Vec<String>,
    subresource: String,
}

impl Facts {
    /// For the controller: the indexes are fed by watches, started the first time a kubelet
    /// serving request needs them; `on_change` hears when a Node's addresses change.
    pub fn watched(client: Client, on_change: impl Fn(FactChange) + Send + Sync + 'static) -> Self {
        Facts {
            client,
            nodes: Default::default(),
            api_server: Default::default(),
            feed: Feed::Watch {
                started: Mutex::new(None),
                on_change: Arc::new(on_change),
                changed: Default::default(),
            },
            reviews: Default::default(),
            privilege: Default::default(),
        }
    }

    /// For `check`: the indexes are filled from one list the first time they are needed.
    pub fn listed(client: Client) -> Self {
        Facts {
            client,
            nodes: Default::default(),
            api_server: Default::default(),
            feed: Feed::List {
                loaded: tokio::sync::OnceCell::new(),
            },
            reviews: Default::default(),
            privilege: Default::default(),
        }
    }

    /// Count the privilege ceiling's reviews in `family` (the controller's metrics).
    pub fn count_privilege_reviews_in(
        self,
        family: prometheus_client::metrics::family::Family<
            crate::ops::metrics::PrivilegeReviewLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> Self {
        self.privilege.count_in(family);
        self
    }

    /// The privilege ceiling's answers for `identity`, asked with the policy's `checks`. A
    /// review that cannot be had is an answer too (`Unavailable`): the policy never approves or
    /// signs on it.
    pub async fn privilege(
        &self,
        identity: &crate::policy::CertificateIdentity,
        checks: &[PrivilegeCheck],
    ) -> crate::policy::PrivilegeReview {
        self.privilege.review(&self.client, identity, checks).await
    }

    /// Ask for the facts `needed` for `view`; `checks` are the policy's privilege checks.
    pub async fn lookup(
        &self,
        needed: &FactsNeeded,
        view: &CsrView,
        checks: &[PrivilegeCheck],
    ) -> Result<ClusterFacts, FactsError> {
        let mut facts = ClusterFacts::default();
        if let Some(identity) = &needed.privilege {
            facts.privilege = Some(self.privilege(identity, checks).await);
        }
        if needed.node_client_review {
            facts.node_client_allowed = Some(self.review(view, "nodeclient").await?);
        }
        if needed.self_node_client_review {
            facts.self_node_client_allowed = Some(self.review(view, "selfnodeclient").await?);
        }
        if let Some(node_name) = &needed.node_name {
            self.ready().await?;
            facts.node = Some(self.nodes.lookup(node_name));
            facts.other_nodes = Some(self.nodes.claims(node_name, &serving_sans(view)));
            facts.api_server = self.api_server.addresses();
            if facts.api_server.is_none() {
                return Err(FactsError::NotSynced(
                    "API server's addresses (Service default/kubernetes, its EndpointSlices)",
                ));
            }
        }
        Ok(facts)
    }

    /// The indexes are filled: watched and synced, or listed. Within [`FIRST_SYNC_WAIT`] of
    /// the watches' start this waits for their first sync: the controller starts them with
    /// itself, and the first kubelet serving CSR of a start (listed with the CSRs, decided at
    /// once) would otherwise race their first lists, fail, and wait to be requeued by them.
    /// Later, an index not synced (the watch cannot list: RBAC) fails at once, so that no
    /// worker is held.
    async fn ready(&self) -> Result<(), FactsError> {
        match &self.feed {
            Feed::Watch {
                started, changed, ..
            } => {
                self.watch();
                let started = started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(tokio::time::Instant::now);
                let deadline = started + FIRST_SYNC_WAIT;
                loop {
                    // Registered before looking, so a sync between the look and the wait wakes it.
                    let woken = changed.notified();
                    if !self.nodes.is_synced() {
                        if tokio::time::timeout_at(deadline, woken).await.is_err() {
                            return Err(FactsError::NotSynced("Nodes' addresses"));
                        }
                    } else if self.api_server.addresses().is_none() {
                        if tokio::time::timeout_at(deadline, woken).await.is_err() {
                            // lookup says which.
                            return Ok(());
                        }
                    } else {
                        return Ok(());
                    }
                }
            }
            Feed::List { loaded } => loaded.get_or_try_init(|| self.list_all()).await.copied(),
        }
    }

    /// Start the watches that feed the indexes, once (the controller does at start when it
    /// decides kubelet serving requests, so that the first one finds them synced; else the
    /// first lookup does). For `check`, nothing: it lists.
    pub fn watch(&self) {
        if let Feed::Watch {
            started,
            on_change,
            changed,
        } = &self.feed
        {
            let start = {
                let mut started = started.lock().unwrap_or_else(|p| p.into_inner());
                let first = started.is_none();
                started.get_or_insert_with(tokio::time::Instant::now);
                first
            };
            if start {
                let changed = changed.clone();
                let on_change = on_change.clone();
                let notifying: Arc<dyn Fn(FactChange) + Send + Sync> = Arc::new(move |change| {
                    changed.notify_waiters();
                    on_change(change)
                });
                self.start_watches(&notifying);
            }
        }
    }

    fn start_watches(&self, on_change: &Arc<dyn Fn(FactChange) + Send + Sync>) {
        tracing::info!(
            "watching Nodes, Service default/kubernetes and its EndpointSlices for kubelet serving requests"
        );
        tokio::spawn(watch_nodes(
            Api::all(self.client.clone()),
            self.nodes.clone(),
            on_change.clone(),
        ));
        let services = Api::namespaced(self.client.clone(), API_SERVER_NAMESPACE);
        tokio::spawn(watch_service(
            services,
            self.api_server.clone(),
            on_change.clone(),
        ));
        let slices = Api::namespaced(self.client.clone(), API_SERVER_NAMESPACE);
        tokio::spawn(watch_slices(
            slices,
            self.api_server.clone(),
            on_change.clone(),
        ));
    }

    async fn list_all(&self) -> Result<(), FactsError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut all = Vec::new();
        list_paged(&nodes, ListParams::default(), |page| {
            all.extend(page.iter().map(|n| (n.name_any(), node_addresses(n))));
        })
        .await
        .map_err(|source| FactsError::Kube {
            what: "list nodes",
            source,
        })?;
        self.nodes.replace(all);
        let services: Api<Service> = Api::namespaced(self.client.clone(), API_SERVER_NAMESPACE);
        let service = within(REQUEST_TIMEOUT, services.get_opt(API_SERVER_SERVICE))
            .await
            .map_err(|source| FactsError::Kube {
                what: "get service default/kubernetes",
                source,
            })?;
        self.api_server.set_service(service.as_ref());
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), API_SERVER_NAMESPACE);
        let selector =
            ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={API_SERVER_SERVICE}"));
        let listed = within(REQUEST_TIMEOUT, slices.list(&selector))
            .await
            .map_err(|source| FactsError::Kube {
                what: "list endpointslices in default",
                source,
            })?;
        self.api_server.set_slices(&listed.items);
        Ok(())
    }

    /// SubjectAccessReview, as kube-controller-manager's CSR approver does it; an answer for
    /// the same identity from the last [`REVIEW_REUSE`] is reused.
    async fn review(&self, view: &CsrView, subresource: &str) -> Result<bool, FactsError> {
        let key = ReviewKey {
            user: view.requester.username.clone(),
            uid: view.requester.uid.clone(),
            groups: view.requester.groups.clone(),
            subresource: subresource.to_owned(),
        };
        let now = std::time::Instant::now();
        let recent = {
            let mut reviews = self.reviews.lock().unwrap_or_else(|p| p.into_inner());
            reviews.retain(|_, (_, at)| now.saturating_duration_since(*at) < REVIEW_REUSE);
            reviews.get(&key).map(|(allowed, _)| *allowed)
        };
        if let Some(allowed) = recent {
            return Ok(allowed);
        }
        let allowed = self.ask_review(view, subresource).await?;
        self.reviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (allowed, now));
        Ok(allowed)
    }

    async fn ask_review(&self, view: &CsrView, subresource: &str) -> Result<bool, FactsError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(view.requester.username.clone()),
                uid: view.requester.uid.clone(),
                groups: Some(view.requester.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("certificates.k8s.io".into()),
                    resource: Some("certificatesigningrequests".into()),
                    verb: Some("create".into()),
                    subresource: Some(subresource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = within(
            REVIEW_TIMEOUT,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|source| FactsError::Kube {
            what: "create a subjectaccessreview",
            source,
        })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// Every SAN of a serving request as written, for the other-Node lookup.
fn serving_sans(view: &CsrView) -> Vec<String> {
    let Ok(request) = &view.request else {
        return Vec::new();
    };
    request
        .dns_names
        .iter()
        .cloned()
        .chain(request.ip_addresses.iter().map(IpAddr::to_string))
        .collect()
}

/// Keep `index` current from a Node watch. Only names and addresses are kept; a Node whose
/// addresses change (or that comes or goes) is reported, as is every completed (re)list.
async fn watch_nodes(
    api: Api<Node>,
    index: Arc<NodeIndex>,
    on_change: Arc<dyn Fn(FactChange) + Send + Sync>,
) {
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let mut events = std::pin::pin!(watch::events(api, config, "Node"));
    let mut listing: Vec<(String, Vec<String>)> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(node) => {
                listing.push((node.name_any(), node_addresses(&node)));
            }
            watcher::Event::InitDone => {
                let first = !index.is_synced();
                index.replace(std::mem::take(&mut listing));
                if first {
                    tracing::info!(nodes = index.len(), "Node addresses synced");
                }
                on_change(FactChange::Everything);
            }
            watcher::Event::Apply(node) => {
                let name = node.name_any();
                if index.write().set(&name, node_addresses(&node)) {
                    on_change(FactChange::Node(name));
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.name_any();
                if index.write().remove(&name) {
                    on_change(FactChange::Node(name));
                }
            }
        }
    }
}

/// Keep the ClusterIPs of Service default/kubernetes current; the CSRs that waited on them
/// hear of every sync and change.
async fn watch_service(
    api: Api<Service>,
    index: Arc<ApiServerIndex>,
    on_change: Arc<dyn Fn(FactChange) + Send + Sync>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={API_SERVER_SERVICE}"));
    let mut events = std::pin::pin!(watch::events(api, config, "Service default/kubernetes"));
    let mut listing: Option<Service> = None;
    while let Some(event) = events.next().await {
        match event {
            watcher::Event::Init => {
                listing = None;
                continue;
            }
            watcher::Event::InitApply(service) => {
                listing = Some(service);
                continue;
            }
            watcher::Event::InitDone => index.set_service(listing.take().as_ref()),
            watcher::Event::Apply(service) => index.set_service(Some(&service)),
            watcher::Event::Delete(_) => index.set_service(None),
        }
        on_change(FactChange::Everything);
    }
}

/// Keep the addresses of the EndpointSlices of Service default/kubernetes current; the CSRs
/// that waited on them hear of every sync and change.
async fn watch_slices(
    api: Api<EndpointSlice>,
    index: Arc<ApiServerIndex>,
    on_change: Arc<dyn Fn(FactChange) + Send + Sync>,
) {
    let config =
        watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={API_SERVER_SERVICE}"));
    let mut events = std::pin::pin!(watch::events(
        api,
        config,
        "EndpointSlices of Service default/kubernetes"
    ));
    let mut listing: Vec<EndpointSlice> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            watcher::Event::Init => {
                listing.clear();
                continue;
            }
            watcher::Event::InitApply(slice) => {
                listing.push(slice);
                continue;
            }
            watcher::Event::InitDone => index.set_slices(&std::mem::take(&mut listing)),
            watcher::Event::Apply(slice) => index.apply_slice(&slice, false),
            watcher::Event::Delete(slice) => index.apply_slice(&slice, true),
        }
        on_change(FactChange::Everything);
    }
}
