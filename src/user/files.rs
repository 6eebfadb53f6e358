//! Files written whole or not at all: each goes to a temporary file beside its destination
//! (same directory, so the rename is atomic), created with its final mode, and takes its place
//! only when everything it belongs with is ready. Ctrl-C, a timeout or an error before that
//! leaves nothing behind: a staged file not committed is removed when dropped.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::UserError;

/// Private keys, the cache, kubeconfigs: the owner only.
pub const PRIVATE: u32 = 0o600;
/// Certificates are not secret.
pub const PUBLIC: u32 = 0o644;

/// A file written to a temporary name, waiting to be renamed into place.
#[derive(Debug)]
pub struct Staged {
    temporary: PathBuf,
    destination: PathBuf,
    committed: bool,
}

impl Staged {
    /// Write `contents` to a fresh temporary file beside `destination`, with `mode` from the
    /// start (a key is never readable by others, not even for a moment).
    pub fn write(destination: &Path, contents: &[u8], mode: u32) -> Result<Staged, UserError> {
        let directory = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                UserError::Input(format!("{} is not a file name", destination.display()))
            })?;
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix)
            .map_err(|e| UserError::Key(format!("no randomness for a file name: {e}")))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let temporary = directory.join(format!(".{file_name}.{suffix}.tmp"));
        let staged = Staged {
            temporary,
            destination: destination.to_path_buf(),
            committed: false,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged.temporary)
            .map_err(|e| UserError::file("cannot create a file in", &directory, e))?;
        // The umask may have taken bits the mode asked for; a key must not keep more.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| file.write_all(contents))
            .and_then(|()| file.sync_all())
            .map_err(|e| UserError::file("cannot write", &staged.temporary, e))?;
        Ok(staged)
    }

    /// Rename into place. After this the file is the destination's, not ours to remove.
    pub fn commit(mut self) -> Result<(), UserError> {
        std::fs::rename(&self.temporary, &self.destination)
            .map_err(|e| UserError::file("cannot write", &self.destination, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Write `contents` to `destination` whole or not at all.
pub fn write_atomically(destination: &Path, contents: &[u8], mode: u32) -> Result<(), UserError> {
    Staged::write(destination, contents, mode)?.commit()
}

/// Create `directory` (and its parents) if needed and make it the owner's only.
pub fn private_directory(directory: &Path) -> Result<(), UserError> {
    std::fs::create_dir_all(directory)
        .and_then(|()| std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| UserError::file("cannot create the directory", directory, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_staged_file_not_committed_leaves_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("jane.key");
        let staged = Staged::write(&key, b"secret", PRIVATE).expect("staged");
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn a_committed_key_is_the_owners_only() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("jane.key");
        write_atomically(&key, b"secret", PRIVATE).expect("write");
        let metadata = std::fs::metadata(&key).expect("metadata");
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).expect("read"), b"secret");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}
