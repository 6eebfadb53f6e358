//! The user's side: what a person asking for a client certificate runs on their own machine.
//!
//! - [`request`]: `csr-warden request` (also `kubectl csr-warden request`): a key made here, a CSR,
//!   the decision followed as it happens, the certificate written, a kubeconfig context on request.
//! - [`credential`]: `csr-warden credential`, a client-go exec credential plugin that keeps a
//!   short-lived certificate in a per-user cache and asks for the next one by itself.
//! - [`follow`]: creating a CSR and following it to a certificate (shared by both).
//! - [`cache`], [`files`], [`kubeconfig`], [`key`]: the cache, files written whole or not at all,
//!   the user's kubeconfig, the key and the request.
//!
//! Nothing here needs csr-warden to be the approver or the signer: it only creates a CSR and
//! watches it, so it works as well when a human approves and kube-controller-manager signs.
//! csr-warden's Events, when there are any, say why a request waits.

pub mod cache;
pub mod credential;
pub mod files;
pub mod follow;
pub mod key;
pub mod kubeconfig;
pub mod request;

use std::path::PathBuf;

/// Exit codes of `csr-warden request` (and of `credential` when it cannot give a certificate).
/// Documented in README ("The user's flow"); scripts rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The certificate was written.
    Issued = 0,
    /// Bad input, no cluster, no permission, a file that cannot be written.
    Error = 1,
    /// The CSR was denied (by csr-warden or a human); a denied CSR is final.
    Denied = 2,
    /// The CSR was approved but its signer marked it Failed.
    Failed = 3,
    /// Still waiting for a decision when `--timeout` ran out.
    StillPending = 4,
    /// Approved, but no certificate by the time `--timeout` ran out (is anything signing this
    /// signerName?).
    NotIssued = 5,
    /// Ctrl-C (as a shell reports SIGINT).
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Input(String),
    #[error(
        "cannot read the kubeconfig{}: {source}; pass --kubeconfig or set KUBECONFIG, and --context to pick a context",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    Kubeconfig {
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a client for the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}{}", advice_for(source))]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the key or the request: {0}")]
    Key(String),
    #[error("the certificate the cluster returned cannot be used: {0}")]
    Certificate(String),
}

impl UserError {
    pub(crate) fn api(what: impl Into<String>, source: kube::Error) -> Self {
        UserError::Api {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn file(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        UserError::File {
            what,
            path: path.into(),
            source,
        }
    }
}

/// What to do about an API error, in the words of the person who got it.
fn advice_for(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 401 => {
            "; the credentials of this context are not accepted (expired token? log in again)"
        }
        kube::Error::Api(status) if status.code == 403 => {
            "; ask an operator to bind you the ClusterRole csr-warden-requester (README: \"Who may submit a CSR\")"
        }
        kube::Error::Api(status) if status.code == 409 => {
            "; a CSR of that name exists already: pick another --name"
        }
        kube::Error::Api(status) if status.code == 422 => {
            "; the API server refused the request as invalid (see the message)"
        }
        kube::Error::Api(_) => "",
        _ => "; is the cluster your kubeconfig names reachable from here?",
    }
}

/// Run one user command on a runtime of its own; an error is said on stderr under `prefix`.
fn block_on(
    command: impl std::future::Future<Output = Result<Exit, UserError>>,
    prefix: &str,
) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("csr-warden: cannot start the async runtime: {error}");
            return Exit::Error;
        }
    };
    match runtime.block_on(command) {
        Ok(exit) => exit,
        Err(error) => {
            eprintln!("{prefix}: {error}");
            Exit::Error
        }
    }
}
