//! Rules 4 and 5: kubelet client and kubelet serving certificates, and the serving addresses
//! a kubelet may be given (`kubelet.servingAddresses`).

use super::*;

/// Subject must be exactly CN=system:node:<name>, O=system:nodes.
pub(super) fn node_subject_problem(request: &CertificateRequest) -> Option<String> {
    let node_name = request
        .common_name
        .as_deref()
        .and_then(|cn| cn.strip_prefix(NODE_USER_PREFIX));
    if node_name.is_none_or(str::is_empty) {
        return Some(format!(
            "CN must be \"system:node:<node name>\", got {:?}",
            request.common_name.as_deref().unwrap_or("")
        ));
    }
    if request.organizations != [NODE_GROUP] {
        return Some(format!(
            "O must be exactly [{NODE_GROUP}], got {:?}",
            request.organizations
        ));
    }
    None
}

pub(super) fn kubelet_client(
    csr: &CsrView,
    request: &CertificateRequest,
    facts: &ClusterFacts,
) -> Decision {
    if let Some((reason, problem)) = signer_shape_problem(&csr.signer_name, &csr.usages, request) {
        return deny(reason, problem);
    }
    let common_name = request.common_name.as_deref().unwrap_or_default();
    // As kube-controller-manager does: a bootstrap token may ask for any node (nodeclient); a
    // node renewing its own certificate needs selfnodeclient.
    if facts.node_client_allowed == Some(true) {
        return approve(
            Reason::AutoApprovedKubeletClient,
            format!(
                "kubelet client certificate for {common_name}: requester {:?} may create \
                 certificatesigningrequests/nodeclient",
                csr.requester.username
            ),
        );
    }
    if csr.requester.username == common_name && facts.self_node_client_allowed == Some(true) {
        return approve(
            Reason::AutoApprovedKubeletClient,
            format!("kubelet client certificate renewal by {common_name} itself (selfnodeclient)"),
        );
    }
    let unknown = facts.node_client_allowed.is_none()
        || (csr.requester.username == common_name && facts.self_node_client_allowed.is_none());
    let why = if unknown {
        "the SubjectAccessReview was not performed (offline)"
    } else {
        "no SubjectAccessReview allows the requester to create \
         certificatesigningrequests/nodeclient or selfnodeclient"
    };
    leave(
        Reason::KubeletClientNotAuthorized,
        format!(
            "kubelet client request for {common_name} by {:?}: {why}; left pending",
            csr.requester.username
        ),
    )
}

/// The rules of a kubelet serving request, each a step of the trace. Every SAN is something the
/// node says about itself (a kubelet writes its own Node's status), so matching the Node is
/// necessary but not enough: the names and addresses of the API server, of in-cluster Services,
/// of the host itself and of every other Node are refused whatever the Node lists.
pub(super) fn kubelet_serving(
    csr: &CsrView,
    request: &CertificateRequest,
    facts: &ClusterFacts,
    policy: &Policy,
    trace: &mut Trace,
) -> Decision {
    // Subject, usages and SAN kinds: what the signer itself would refuse to issue.
    if let Some((reason, problem)) = signer_shape_problem(&csr.signer_name, &csr.usages, request) {
        return deny(reason, problem);
    }
    let common_name = request.common_name.as_deref().unwrap_or_default();
    // Only the node itself may ask for its serving certificate: its username and its group.
    if csr.requester.username != common_name {
        return deny(
            Reason::SubjectMismatch,
            format!(
                "requester {:?} is not the node {common_name:?}; a kubelet may only request its \
                 own serving certificate",
                csr.requester.username
            ),
        );
    }
    if !csr.requester.groups.iter().any(|g| g == NODE_GROUP) {
        return deny(
            Reason::SubjectMismatch,
            format!(
                "requester {:?} is not in group {NODE_GROUP} (its groups: [{}]); only a node's \
                 own credentials may request its serving certificate",
                csr.requester.username,
                csr.requester.groups.join(", ")
            ),
        );
    }
    trace.pass(
        RULE_SERVING_REQUESTER,
        format!("requested by {common_name} itself, in group {NODE_GROUP}"),
    );
    if let Some(wildcard) = request.dns_names.iter().find(|d| d.contains('*')) {
        return deny(
            Reason::DisallowedSANs,
            format!("DNS SAN {wildcard:?} is a wildcard; a node serves under its own names only"),
        );
    }
    trace.pass(
        RULE_SERVING_SHAPE,
        format!("usages [{}], DNS and IP SANs only", csr.usages.join(", ")),
    );

    let sans = serving_sans(request);
    // The identities no node may hold, whatever its Node object says.
    for san in &sans {
        if let Some(decision) = reserved_identity(san, &policy.cluster_domain) {
            return decision;
        }
    }
    trace.pass(
        RULE_SERVING_RESERVED,
        format!(
            "no SAN names the API server, a Service or Pod under {:?} or .svc, localhost, or an \
             unspecified, loopback, link-local or multicast address",
            policy.cluster_domain
        ),
    );
    if let Some(decision) = outside_serving_addresses(&sans, &policy.serving_addresses) {
        return decision;
    }
    if policy.serving_addresses.is_restricted() {
        trace.pass(
            RULE_SERVING_ADDRESSES,
            format!(
                "every SAN within kubelet.servingAddresses ({})",
                policy.serving_addresses
            ),
        );
    } else {
        trace.skip(
            RULE_SERVING_ADDRESSES,
            "no kubelet.servingAddresses in the policy",
        );
    }

    let node_name = common_name.trim_start_matches(NODE_USER_PREFIX);
    let Some(api_server) = &facts.api_server else {
        return leave(
            Reason::NodeFactsUnavailable,
            "the API server's in-cluster addresses (Service default/kubernetes and its \
             EndpointSlices) were not looked up (offline: --apiserver-addresses); left pending",
        );
    };
    for san in &sans {
        if let ServingSan::Ip { ip, written } = san
            && api_server.contains(ip)
        {
            return deny(
                Reason::ApiServerAddress,
                format!(
                    "IP SAN {written} is an address of the API server (Service \
                     default/kubernetes or its endpoints: {}); a node may never hold a \
                     certificate for it",
                    join_ips(api_server)
                ),
            );
        }
    }
    trace.pass(
        RULE_SERVING_API_SERVER,
        format!(
            "no SAN is an address of the API server ({})",
            join_ips(api_server)
        ),
    );

    let addresses = match &facts.node {
        None => {
            return leave(
                Reason::NodeFactsUnavailable,
                format!(
                    "the addresses of Node {node_name:?} were not looked up (offline: \
                     --node-addresses); left pending"
                ),
            );
        }
        Some(NodeLookup::Missing) => {
            return deny(
                Reason::NodeAddressMismatch,
                format!("Node {node_name:?} does not exist, so its addresses cannot be checked"),
            );
        }
        Some(NodeLookup::Addresses(addresses)) if addresses.is_empty() => {
            return leave(
                Reason::NodeAddressesPending,
                format!(
                    "Node {node_name:?} has no addresses yet (its cloud provider may not have \
                     initialised it); left pending, and decided again when its addresses change"
                ),
            );
        }
        Some(NodeLookup::Addresses(addresses)) => addresses,
    };
    for san in &sans {
        if !addresses.iter().any(|a| san.is(a)) {
            return deny(
                Reason::NodeAddressMismatch,
                format!(
                    "{san} is not an address of Node {node_name:?} (its addresses: {})",
                    addresses.join(", ")
                ),
            );
        }
    }
    trace.pass(
        RULE_SERVING_NODE,
        format!(
            "every SAN is an address of Node {node_name:?} ({})",
            addresses.join(", ")
        ),
    );

    let Some(others) = &facts.other_nodes else {
        return leave(
            Reason::NodeFactsUnavailable,
            "the other Nodes' addresses were not looked up (offline: --other-node-addresses); \
             left pending",
        );
    };
    for san in &sans {
        if let Some(claim) = others
            .iter()
            .find(|claim| claim.node != node_name && san.is(&claim.address))
        {
            return deny(
                Reason::AddressOfAnotherNode,
                format!(
                    "{san} is also an address of Node {:?}; a node may not hold a certificate \
                     that lets it pose as another",
                    claim.node
                ),
            );
        }
    }
    trace.pass(RULE_SERVING_OTHER_NODES, "no SAN is listed by another Node");
    approve(
        Reason::AutoApprovedKubeletServing,
        format!(
            "kubelet serving certificate for {common_name}: every SAN is an address of its Node \
             and of no other, and none is reserved"
        ),
    )
}

/// One SAN of a serving request, normalised for comparison: DNS names lower-case without a
/// trailing dot; IPs canonical (an IPv4-mapped IPv6 address is the IPv4 address). A DNS SAN
/// written as an IP literal is checked as that IP too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ServingSan {
    Dns { name: String, written: String },
    Ip { ip: IpAddr, written: String },
}

impl ServingSan {
    /// Whether a Node address (any type, as the Node lists it) is this SAN.
    fn is(&self, address: &str) -> bool {
        match self {
            ServingSan::Dns { name, .. } => normalize_dns(address) == *name,
            ServingSan::Ip { ip, .. } => address
                .trim()
                .parse::<IpAddr>()
                .is_ok_and(|a| a.to_canonical() == *ip),
        }
    }
}

impl std::fmt::Display for ServingSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingSan::Dns { written, .. } => write!(f, "DNS SAN {written:?}"),
            ServingSan::Ip { written, .. } => write!(f, "IP SAN {written}"),
        }
    }
}

/// A DNS name as compared: ASCII lower-case, without the root's trailing dot.
pub fn normalize_dns(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    name.strip_suffix('.').map(str::to_owned).unwrap_or(name)
}

pub(super) fn serving_sans(request: &CertificateRequest) -> Vec<ServingSan> {
    let mut sans = Vec::new();
    for dns in &request.dns_names {
        let name = normalize_dns(dns);
        if let Ok(ip) = name.parse::<IpAddr>() {
            sans.push(ServingSan::Ip {
                ip: ip.to_canonical(),
                written: dns.clone(),
            });
        }
        sans.push(ServingSan::Dns {
            name,
            written: dns.clone(),
        });
    }
    for ip in &request.ip_addresses {
        sans.push(ServingSan::Ip {
            ip: ip.to_canonical(),
            written: ip.to_string(),
        });
    }
    sans
}

/// The names of the API server's Service in every cluster domain.
pub(super) const API_SERVER_NAMES: &[&str] =
    &["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

/// A SAN no node may hold: the API server's in-cluster names, anything under the Service or
/// cluster domain, localhost, and addresses that are not one host's unicast address.
pub(super) fn reserved_identity(san: &ServingSan, cluster_domain: &str) -> Option<Decision> {
    match san {
        ServingSan::Dns { name, written } => {
            if API_SERVER_NAMES.contains(&name.as_str())
                || name.starts_with("kubernetes.default.svc.")
            {
                return Some(deny(
                    Reason::ApiServerName,
                    format!(
                        "DNS SAN {written:?} is a name of the API server (Service \
                         default/kubernetes); a node may never hold a certificate for it"
                    ),
                ));
            }
            let domain = normalize_dns(cluster_domain);
            let in_cluster = name.ends_with(".svc")
                || name.contains(".svc.")
                || name == &domain
                || name.ends_with(&format!(".{domain}"));
            if in_cluster {
                return Some(deny(
                    Reason::ServiceDomainName,
                    format!(
                        "DNS SAN {written:?} is an in-cluster name (under .svc or the cluster \
                         domain {domain:?}); Services and Pods, not nodes, answer there"
                    ),
                ));
            }
            if name == "localhost"
                || name.ends_with(".localhost")
                || name == "localhost.localdomain"
            {
                return Some(deny(
                    Reason::LocalhostName,
                    format!(
                        "DNS SAN {written:?} names localhost; every host is localhost to itself"
                    ),
                ));
            }
            None
        }
        ServingSan::Ip { ip, written } => {
            let kind = non_unicast_kind(ip)?;
            Some(deny(
                Reason::NonUnicastAddress,
                format!("IP SAN {written} is {kind}, not an address that identifies one node"),
            ))
        }
    }
}

pub(super) fn non_unicast_kind(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("the unspecified address")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

pub(super) fn outside_serving_addresses(
    sans: &[ServingSan],
    allowed: &ServingAddresses,
) -> Option<Decision> {
    for san in sans {
        let outside = match san {
            ServingSan::Ip { ip, .. } => {
                !allowed.ip_ranges.is_empty() && !allowed.ip_ranges.iter().any(|r| r.contains(ip))
            }
            // A DNS SAN written as an IP is judged by the IP rule above.
            ServingSan::Dns { name, .. } if name.parse::<IpAddr>().is_ok() => false,
            ServingSan::Dns { name, .. } => {
                !allowed.dns_names.is_empty() && !allowed.dns_names.iter().any(|r| r.is_match(name))
            }
        };
        if outside {
            return Some(deny(
                Reason::OutsideServingAddresses,
                format!("{san} is outside the policy's kubelet.servingAddresses ({allowed})"),
            ));
        }
    }
    None
}

pub(super) fn join_ips(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none known".into();
    }
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `kubelet.servingAddresses`: where kubelet serving SANs may point, beyond being the Node's
/// own. Empty lists do not restrict.
#[derive(Debug, Clone, Default)]
pub struct ServingAddresses {
    /// Every IP SAN inside one of these.
    pub ip_ranges: Vec<IpRange>,
    /// Every DNS SAN (lower-case, no trailing dot) matches one of these (anchored).
    pub dns_names: Vec<regex::Regex>,
}

impl ServingAddresses {
    pub fn is_restricted(&self) -> bool {
        !self.ip_ranges.is_empty() || !self.dns_names.is_empty()
    }
}

impl std::fmt::Display for ServingAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self.ip_ranges.iter().map(IpRange::to_string).collect();
        let names: Vec<String> = self
            .dns_names
            .iter()
            .map(|r| {
                let anchored = r.as_str();
                let inner = anchored
                    .strip_prefix("^(?:")
                    .and_then(|s| s.strip_suffix(")$"))
                    .unwrap_or(anchored);
                format!("{inner:?}")
            })
            .collect();
        write!(
            f,
            "ipRanges [{}], dnsNames [{}]",
            ranges.join(", "),
            names.join(", ")
        )
    }
}

/// An IP network in CIDR notation, e.g. 10.0.0.0/24 or fd00:10::/64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not in CIDR notation (address/prefix)"))?;
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?}: {address:?} is not an IP address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| u32::from(*p) <= bits)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?;
        let range = IpRange { network, prefix };
        if range.canonical_network() != network {
            return Err(format!(
                "{text:?} has host bits set; write its network, {}/{prefix}",
                range.canonical_network()
            ));
        }
        Ok(range)
    }
}

impl IpRange {
    fn canonical_network(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(net) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(net) & mask).into())
            }
            IpAddr::V6(net) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(net) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}
