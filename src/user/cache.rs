//! The credential plugin's cache: one entry per cluster and identity, in a directory only the
//! user can read (0700, files 0600), each entry one JSON file replaced whole, next to a lock
//! file. kubectl may run the plugin several times at once (two terminals, a shell loop): the
//! exclusive lock makes them take turns, so an expired certificate is renewed once, and the
//! others find the new one when their turn comes.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::UserError;
use super::files::{PRIVATE, private_directory, write_atomically};
use super::key::PrivateKeyPem;

/// Whose certificate, from which cluster: what one cache entry holds a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub server: String,
    pub signer: String,
    pub common_name: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A file name that says whose entry it is and cannot collide: the CN made safe, and a
    /// digest of everything that makes the entry.
    fn file_stem(&self) -> String {
        let mut groups = self.groups.clone();
        groups.sort();
        let whole = format!(
            "{}\n{}\n{}\n{}",
            self.server,
            self.signer,
            self.common_name,
            groups.join("\n")
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, whole.as_bytes());
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}-{hex}", safe_name(&self.common_name))
    }
}

/// `text` as a lower-case DNS-label-ish name (also a CSR name): a-z, 0-9 and '-', at most 48.
pub fn safe_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(48);
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "csr".to_owned()
    } else {
        name
    }
}

/// One cache entry's content.
#[derive(Clone, Serialize, Deserialize)]
pub struct Cached {
    /// PEM, PKCS#8.
    pub key: String,
    /// PEM, as status.certificate had it.
    pub certificate: String,
    /// The CSR it came from.
    pub csr: String,
    /// A renewal asked for while the certificate above was still good, not issued yet: asked
    /// about again next time instead of asking anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// A renewal was denied or failed: no new request is made with this certificate (the next
    /// one, once it runs out, is made with the bootstrap context).
    #[serde(default)]
    pub renewal_refused: bool,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Pending {
    pub csr: String,
    pub key: String,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("csr", &self.csr)
            .field("pending", &self.pending.as_ref().map(|p| &p.csr))
            .field("renewal_refused", &self.renewal_refused)
            .finish_non_exhaustive()
    }
}

impl Cached {
    pub fn key_pem(&self) -> PrivateKeyPem {
        PrivateKeyPem(self.key.clone())
    }
}

/// The default cache directory: $XDG_CACHE_HOME/csr-warden, else ~/.cache/csr-warden.
pub fn default_directory() -> Result<PathBuf, UserError> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(xdg).join("csr-warden"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("csr-warden"))
        .ok_or_else(|| UserError::Input("no HOME and no XDG_CACHE_HOME: pass --cache-dir".into()))
}

/// One entry, held under its lock: nobody else reads or writes it meanwhile.
pub struct Entry {
    data: PathBuf,
    /// Held until dropped (closing the file releases the lock).
    _lock: File,
}

impl Entry {
    /// Lock the entry for `identity` in `directory` (made 0700 if need be), waiting for another
    /// process that holds it.
    pub fn lock(directory: &Path, identity: &Identity) -> Result<Entry, UserError> {
        private_directory(directory)?;
        let stem = identity.file_stem();
        let lock_path = directory.join(format!("{stem}.lock"));
        let lock = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(PRIVATE)
                .open(&lock_path)
                .map_err(|e| UserError::file("cannot open the cache lock", &lock_path, e))?
        };
        lock.lock()
            .map_err(|e| UserError::file("cannot lock the cache entry", &lock_path, e))?;
        Ok(Entry {
            data: directory.join(format!("{stem}.json")),
            _lock: lock,
        })
    }

    /// What the entry holds; nothing when it is missing. An entry that cannot be read as one is
    /// treated as missing (a new certificate replaces it), with a word on stderr.
    pub fn read(&self) -> Option<Cached> {
        let text = match std::fs::read(&self.data) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                super::follow::say(&format!(
                    "cannot read the cache entry {} ({e}); requesting a new certificate",
                    self.data.display()
                ));
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(cached) => Some(cached),
            Err(e) => {
                super::follow::say(&format!(
                    "the cache entry {} is not one ({e}); requesting a new certificate",
                    self.data.display()
                ));
                None
            }
        }
    }

    pub fn write(&self, cached: &Cached) -> Result<(), UserError> {
        let text = serde_json::to_vec_pretty(cached)
            .map_err(|e| UserError::Input(format!("cannot write the cache entry: {e}")))?;
        write_atomically(&self.data, &text, PRIVATE)
    }

    pub fn path(&self) -> &Path {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jane() -> Identity {
        Identity {
            server: "https://prod:6443".into(),
            signer: "kubernetes.io/kube-apiserver-client".into(),
            common_name: "jane".into(),
            groups: vec!["developers".into(), "ops".into()],
        }
    }

    #[test]
    fn one_entry_per_cluster_and_identity() {
        let mut other_cluster = jane();
        other_cluster.server = "https://staging:6443".into();
        let mut other_groups = jane();
        other_groups.groups.pop();
        let mut same_groups_reordered = jane();
        same_groups_reordered.groups.reverse();
        assert_ne!(jane().file_stem(), other_cluster.file_stem());
        assert_ne!(jane().file_stem(), other_groups.file_stem());
        assert_eq!(jane().file_stem(), same_groups_reordered.file_stem());
        assert!(jane().file_stem().starts_with("jane-"));
        assert_eq!(safe_name("system:node:Worker_1"), "system-node-worker-1");
    }

    #[test]
    fn the_cache_is_the_users_only() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let cache = dir.path().join("csr-warden");
        let entry = Entry::lock(&cache, &jane()).expect("lock");
        assert!(entry.read().is_none());
        let cached = Cached {
            key: "KEY".into(),
            certificate: "CERT".into(),
            csr: "jane-1".into(),
            pending: None,
            renewal_refused: false,
        };
        entry.write(&cached).expect("write");
        assert_eq!(entry.read().expect("read back").csr, "jane-1");
        assert_eq!(
            std::fs::metadata(&cache).expect("dir").mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(entry.path()).expect("file").mode() & 0o777,
            0o600
        );
        assert!(!format!("{cached:?}").contains("KEY"));
    }
}
