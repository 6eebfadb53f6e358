//! The user's kubeconfig: which cluster and credentials a command uses (never the in-cluster
//! config: this runs on a person's machine), and the user and context it adds.

use std::path::{Path, PathBuf};

use kube::config::{AuthInfo, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedContext};

use super::UserError;
use super::files::{PRIVATE, write_atomically};

/// The kubeconfig as kubectl reads it: `path`, else `KUBECONFIG` (every file, merged), else
/// `~/.kube/config`.
pub fn read(path: Option<&Path>) -> Result<Kubeconfig, UserError> {
    match path {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|source| UserError::Kubeconfig {
        path: path.map(Path::to_path_buf),
        source,
    })
}

/// The client configuration of `context` (the current context when `None`).
pub async fn config(path: Option<&Path>, context: Option<&str>) -> Result<kube::Config, UserError> {
    let kubeconfig = read(path)?;
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| UserError::Kubeconfig {
            path: path.map(Path::to_path_buf),
            source,
        })
}

/// The named context (the current one when `None`): its name and its settings.
pub fn context_of(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
) -> Result<(String, Context), UserError> {
    let name = context
        .map(str::to_owned)
        .or_else(|| kubeconfig.current_context.clone())
        .ok_or_else(|| {
            UserError::Input(
                "the kubeconfig has no current-context: pass --context NAME".to_owned(),
            )
        })?;
    let found = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| {
            let known: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            UserError::Input(format!(
                "the kubeconfig has no context {name:?}: name one of {known:?}"
            ))
        })?;
    Ok((name, found))
}

/// The file a new user and context are written to: `path`, else the first file of
/// `KUBECONFIG`, else `~/.kube/config` (the file kubectl config set-credentials writes).
pub fn file_to_edit(path: Option<&Path>) -> Result<PathBuf, UserError> {
    if let Some(path) = path {
        return Ok(path.to_path_buf());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|list| std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".kube").join("config"))
        .ok_or_else(|| UserError::Input("no HOME and no KUBECONFIG: pass --kubeconfig".into()))
}

/// Add (or replace) user `name` with `user`, and context `name` joining it to `cluster`, in
/// `file`; the current context is left as it is. Written whole, 0600.
pub fn set_user_and_context(
    file: &Path,
    name: &str,
    user: AuthInfo,
    cluster: &str,
    namespace: Option<String>,
) -> Result<(), UserError> {
    let mut kubeconfig = match std::fs::read_to_string(file) {
        Ok(text) => Kubeconfig::from_yaml(&text).map_err(|source| UserError::Kubeconfig {
            path: Some(file.to_path_buf()),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kubeconfig {
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            ..Kubeconfig::default()
        },
        Err(e) => return Err(UserError::file("cannot read", file, e)),
    };
    let named_user = NamedAuthInfo {
        name: name.to_owned(),
        auth_info: Some(user),
        ..NamedAuthInfo::default()
    };
    match kubeconfig.auth_infos.iter_mut().find(|u| u.name == name) {
        Some(existing) => *existing = named_user,
        None => kubeconfig.auth_infos.push(named_user),
    }
    let named_context = NamedContext {
        name: name.to_owned(),
        context: Some(Context {
            cluster: cluster.to_owned(),
            user: Some(name.to_owned()),
            namespace,
            ..Context::default()
        }),
        ..NamedContext::default()
    };
    match kubeconfig.contexts.iter_mut().find(|c| c.name == name) {
        Some(existing) => *existing = named_context,
        None => kubeconfig.contexts.push(named_context),
    }
    let text = serde_saphyr::to_string(&kubeconfig)
        .map_err(|e| UserError::Input(format!("cannot write the kubeconfig as YAML: {e}")))?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| UserError::file("cannot create", parent, e))?;
    }
    write_atomically(file, text.as_bytes(), PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_added_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod:6443\nusers:\n- name: oidc\n  user:\n    token: abc\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: oidc\ncurrent-context: prod\n",
        )
        .expect("write");
        let user = AuthInfo {
            client_certificate: Some("/home/jane/jane.crt".into()),
            client_key: Some("/home/jane/jane.key".into()),
            ..AuthInfo::default()
        };
        set_user_and_context(&file, "jane@prod", user.clone(), "prod", None).expect("set");
        // Twice is the same as once.
        set_user_and_context(&file, "jane@prod", user, "prod", None).expect("set again");
        let read = Kubeconfig::read_from(&file).expect("read back");
        assert_eq!(read.current_context.as_deref(), Some("prod"));
        assert_eq!(read.auth_infos.len(), 2);
        assert_eq!(read.contexts.len(), 2);
        let (_, context) = context_of(&read, Some("jane@prod")).expect("context");
        assert_eq!(context.cluster, "prod");
        let oidc = read
            .auth_infos
            .iter()
            .find(|u| u.name == "oidc")
            .expect("oidc user kept");
        assert!(
            oidc.auth_info
                .as_ref()
                .and_then(|u| u.token.as_ref())
                .is_some()
        );
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            std::fs::metadata(&file).expect("meta").mode() & 0o777,
            0o600
        );
    }
}
