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
