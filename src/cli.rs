//! The command line: every subcommand and flag (each flag can also come from the environment).

use std::path::PathBuf;

/// Command line. Every flag can also come from the environment (see `--help`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "csr-warden",
    version,
    about = "Approves, denies and signs Kubernetes CertificateSigningRequests by policy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the controller against the cluster (in-cluster config, else KUBECONFIG/~/.kube/config).
    Run(RunArgs),
    /// Explain what the policy decides for a CSR (a file, or a live one with the cluster's facts)
    /// and every rule it looked at; exit 0 approve, 1 deny, 2 leave, 3 bad input or no such CSR.
    Check(CheckArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Get a client certificate: make a key here, create the CSR, follow it to the certificate
    /// and write both (and a kubeconfig context); exit 0 issued, 1 error, 2 denied, 3 failed,
    /// 4 still pending at --timeout, 5 approved but not issued, 130 interrupted.
    Request(RequestArgs),
    /// kubectl exec credential plugin: a cached short-lived client certificate, renewed by itself
    /// (`csr-warden request --exec` prints the kubeconfig stanza).
    Credential(CredentialArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Report every problem in a policy file, with its line; exit 0 when valid.
    Validate { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (a pod), text when it is.
    Auto,
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Policy file (the mounted ConfigMap).
    #[arg(
        long,
        env = "CSR_WARDEN_POLICY",
        default_value = "/etc/csr-warden/policy/policy.yaml"
    )]
    pub policy: PathBuf,
    /// Default CA certificate (tls.crt of the mounted kubernetes.io/tls Secret), for signing
    /// signers without a `ca` of their own. Not read when no signer needs it.
    #[arg(
        long,
        env = "CSR_WARDEN_CA_CERT",
        default_value = "/etc/csr-warden/ca/tls.crt"
    )]
    pub ca_cert: PathBuf,
    /// Default CA private key (tls.key): PKCS#1, SEC1 or PKCS#8 PEM. Not read when no signer
    /// needs it.
    #[arg(
        long,
        env = "CSR_WARDEN_CA_KEY",
        default_value = "/etc/csr-warden/ca/tls.key"
    )]
    pub ca_key: PathBuf,
    /// More certificates of the cluster's own CA (PEM), e.g. the API server's --client-ca-file
    /// when it differs from the CA the service account's ca.crt (or the kubeconfig) names. A
    /// custom signer may not sign with any of them unless it sets allowClusterCA.
    #[arg(long, env = "CSR_WARDEN_CLUSTER_CA_FILE")]
    pub cluster_ca_file: Vec<PathBuf>,
    #[arg(
        long,
        env = "CSR_WARDEN_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub log_format: LogFormat,
    /// Address of /healthz and /readyz.
    #[arg(long, env = "CSR_WARDEN_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Decide and report (logs, Events with a DryRun prefix) but write nothing to CSRs.
    #[arg(long, env = "CSR_WARDEN_DRY_RUN")]
    pub dry_run: bool,
    /// Reported as the Event source instance and used as the leader identity; the pod name.
    #[arg(long, env = "POD_NAME", default_value = "csr-warden")]
    pub instance: String,
    /// Elect a leader on a Lease so that only one replica acts. Off: this replica always acts.
    #[arg(long, env = "CSR_WARDEN_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Namespace of the Lease (the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "csr-warden")]
    pub lease_namespace: String,
    #[arg(long, env = "CSR_WARDEN_LEASE_NAME", default_value = "csr-warden")]
    pub lease_name: String,
    /// A standby takes over within this many seconds after the leader dies.
    #[arg(long, env = "CSR_WARDEN_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
    /// How often the mounted policy and CA files are checked for changes, in milliseconds.
    #[arg(long, env = "CSR_WARDEN_RELOAD_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(50..))]
    pub reload_interval_ms: u64,
    /// CSRs worked at once. Each holds at most one request to the API server at a time, so this
    /// also bounds csr-warden's connections to it, however large a backlog is.
    #[arg(long, env = "CSR_WARDEN_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// How often every CSR is listed fresh from the API server to catch any the watch missed
    /// (counted in csr_warden_resync_recovered_total), in seconds.
    #[arg(long, env = "CSR_WARDEN_RESYNC_INTERVAL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval_seconds: u64,
    /// Server-side timeout of each CSR watch request, in seconds. A watch that brings nothing
    /// (not even the API server's once-a-minute bookmark) for this long plus 5 s is restarted.
    #[arg(long, env = "CSR_WARDEN_WATCH_TIMEOUT_SECONDS", default_value_t = 290, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub watch_timeout_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("input")
        .required(true)
        .args(["name", "csr", "all_pending", "csr_object", "request", "pcr", "pcr_object"])
))]
pub struct CheckArgs {
    /// A live CSR's name: the same as --csr (how `kubectl csr-warden check NAME` passes it).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Explain a live CSR: read it, ask the cluster the facts the controller asks (the
    /// SubjectAccessReviews, the Node) and show its current state. Uses in-cluster config, else
    /// KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "NAME")]
    pub csr: Option<String>,
    /// Explain a live PodCertificateRequest, NAMESPACE/NAME: what the policy gives its pod.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pcr: Option<String>,
    /// A PodCertificateRequest object (YAML or JSON), as `kubectl get podcertificaterequest NAME
    /// -o yaml` prints, decided offline with --policy.
    #[arg(long)]
    pub pcr_object: Option<PathBuf>,
    /// List every pending CSR of the policy's signers with what the policy says about it, one line
    /// each: the queue a human works through.
    #[arg(long)]
    pub all_pending: bool,
    /// Policy file to decide with. For a live CSR it defaults to the running controller's
    /// ConfigMap (--namespace, --policy-configmap); files must always name one.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Namespace csr-warden runs in, where its policy ConfigMap is read from.
    #[arg(long, short = 'n', default_value = "csr-warden")]
    pub namespace: String,
    /// Name of the running controller's policy ConfigMap (key policy.yaml).
    #[arg(long, default_value = "csr-warden-policy")]
    pub policy_configmap: String,
    /// A CertificateSigningRequest object (YAML or JSON), as `kubectl get csr NAME -o yaml` prints.
    #[arg(long)]
    pub csr_object: Option<PathBuf>,
    /// A PEM CSR file (from `openssl req`), with --signer and --usages.
    #[arg(long)]
    pub request: Option<PathBuf>,
    #[arg(long, requires = "request")]
    pub signer: Option<String>,
    /// Comma-separated, e.g. "client auth,digital signature".
    #[arg(long, value_delimiter = ',')]
    pub usages: Vec<String>,
    #[arg(long)]
    pub expiration_seconds: Option<i32>,
    /// The requester (spec.username); overrides the object's (files only).
    #[arg(long, conflicts_with_all = ["name", "csr", "all_pending"])]
    pub username: Option<String>,
    /// The requester's groups (spec.groups), comma-separated; overrides the object's (files only).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "csr", "all_pending"])]
    pub groups: Option<Vec<String>>,
    /// Assume the SubjectAccessReview for certificatesigningrequests/nodeclient allows the
    /// requester (files only: a live check asks the cluster).
    #[arg(long, conflicts_with_all = ["name", "csr", "all_pending"])]
    pub assume_node_client_allowed: bool,
    /// Assume the SubjectAccessReview for certificatesigningrequests/selfnodeclient allows the
    /// requester (files only).
    #[arg(long, conflicts_with_all = ["name", "csr", "all_pending"])]
    pub assume_self_node_client_allowed: bool,
    /// The Node's addresses for a kubelet serving request, comma-separated (files only).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "csr", "all_pending"])]
    pub node_addresses: Option<Vec<String>>,
    /// Addresses other Nodes list, comma-separated, each NODE=ADDRESS or just ADDRESS; '' for
    /// none (files only: a live check reads every Node).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "csr", "all_pending"])]
    pub other_node_addresses: Option<Vec<String>>,
    /// The API server's in-cluster IPs (Service default/kubernetes's ClusterIP, its endpoints),
    /// comma-separated (files only: a live check reads them).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "csr", "all_pending"])]
    pub apiserver_addresses: Option<Vec<String>>,
    /// What the privilege ceiling's SubjectAccessReviews would answer for the certificate's
    /// identity: `none`, or the comma-separated names of the checks that would match (files
    /// only: a live check asks the cluster).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["name", "csr", "all_pending"])]
    pub privilege_matches: Option<Vec<String>>,
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,
}

impl CheckArgs {
    /// The live CSR named, by --csr or positionally.
    pub fn live_name(&self) -> Option<&str> {
        self.csr.as_deref().or(self.name.as_deref())
    }
}

// The user's side (src/user/): `request` and `credential`.

/// Which key `request` and `credential` make. ECDSA P-256 is what kubeadm and cert-manager
/// default to, small and fast, and every signer csr-warden knows accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
}

/// What the certificate is for and how long it lives: the same flags for both commands, so that
/// `request --exec` can hand them on to `credential`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertificateArgs {
    /// The certificate's CN: the user the API server will see. Default: who the cluster says
    /// you are now (`kubectl auth whoami`).
    #[arg(long, visible_alias = "cn", value_name = "NAME")]
    pub common_name: Option<String>,
    /// A group (O) the certificate carries; repeat or comma-separate for several.
    #[arg(long = "group", value_name = "GROUP", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// spec.signerName.
    #[arg(long, default_value = "kubernetes.io/kube-apiserver-client")]
    pub signer: String,
    /// spec.usages, comma-separated. The default suits every client signer (ECDSA keys need no
    /// key encipherment).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "digital signature,client auth"
    )]
    pub usages: Vec<String>,
    /// spec.expirationSeconds as a duration: 600s, 90m, 24h, 7d (at least 10m, the API's floor;
    /// default 24h for `request`, 1h for `credential` and `request --exec`).
    /// The signer may give less (kube-controller-manager caps it at --cluster-signing-duration).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_seconds)]
    pub expiration: Option<i32>,
    /// The key made on this machine.
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    pub key_type: KeyType,
    /// Give up waiting for the certificate after this long (a duration, as --expiration).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_seconds, default_value = "5m")]
    pub timeout: i32,
}

impl CertificateArgs {
    pub fn timeout_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(self.timeout).unwrap_or(0))
    }
}

/// Which kubeconfig and context to talk to the cluster with.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config). kubectl does not pass its
    /// own --kubeconfig to plugins, so use this or KUBECONFIG.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The context to create the CSR with (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub certificate: CertificateArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The CSR's name (default: the CN, made a valid name, and a random suffix).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where the key goes (default: ./<CN>.key), 0600.
    #[arg(long, value_name = "FILE")]
    pub key_out: Option<PathBuf>,
    /// Where the certificate goes (default: ./<CN>.crt).
    #[arg(long, value_name = "FILE")]
    pub cert_out: Option<PathBuf>,
    /// Once issued, add a user and a context of this name to the kubeconfig (its first file),
    /// on the cluster of --context, using the certificate and key files. With --exec, the user
    /// is the exec plugin instead.
    #[arg(long, value_name = "NAME")]
    pub set_context: Option<String>,
    /// Request nothing now: print the kubeconfig `users[].user.exec` stanza that has kubectl run
    /// `csr-warden credential` with these flags, which requests and renews by itself. The
    /// context given by --context is the bootstrap context its first request is made with.
    #[arg(long)]
    pub exec: bool,
    /// With --exec: renew once less than this fraction of the certificate's life is left
    /// (default: a third, or CSR_WARDEN_RENEW_WHEN_REMAINING where kubectl runs the plugin).
    #[arg(long, value_name = "FRACTION", requires = "exec")]
    pub renew_when_remaining: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct CredentialArgs {
    #[command(flatten)]
    pub certificate: CertificateArgs,
    /// The kubeconfig holding the bootstrap context (default: KUBECONFIG, else ~/.kube/config,
    /// which is what kubectl hands its plugins).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The context the first certificate (and any after the last one ran out) is requested
    /// with: an OIDC or token context of yours. It also names the cluster.
    #[arg(long, value_name = "NAME")]
    pub bootstrap_context: String,
    /// Renew once less than this fraction of the certificate's life is left (default: a third;
    /// 1 renews at every use).
    #[arg(
        long,
        env = "CSR_WARDEN_RENEW_WHEN_REMAINING",
        value_name = "FRACTION",
        default_value = "0.333"
    )]
    pub renew_when_remaining: f64,
    /// How long a renewal asked for while the current certificate still works is waited for;
    /// after that kubectl gets the current certificate, and the renewal is asked about again
    /// next time.
    #[arg(
        long,
        env = "CSR_WARDEN_RENEWAL_WAIT",
        value_name = "DURATION",
        value_parser = parse_duration_seconds,
        default_value = "30s"
    )]
    pub renewal_wait: i32,
    /// The cache of keys and certificates (default: $XDG_CACHE_HOME/csr-warden, else
    /// ~/.cache/csr-warden).
    #[arg(long, env = "CSR_WARDEN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// `600`, `600s`, `90m`, `24h`, `7d` as seconds; at least 600 (the API refuses less).
pub fn parse_duration_seconds(text: &str) -> Result<i32, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 600s, 90m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let seconds = number
        .checked_mul(scale)
        .and_then(|s| i32::try_from(s).ok())
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(seconds)
}

#[cfg(test)]
mod user_tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_seconds("600"), Ok(600));
        assert_eq!(parse_duration_seconds("90m"), Ok(5400));
        assert_eq!(parse_duration_seconds("24h"), Ok(86_400));
        assert_eq!(parse_duration_seconds("7d"), Ok(604_800));
        assert!(parse_duration_seconds("1w").is_err());
        assert!(parse_duration_seconds("h").is_err());
        assert!(parse_duration_seconds("99999999d").is_err());
    }
}
