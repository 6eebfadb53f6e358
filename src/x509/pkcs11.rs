//! A CA key held in a PKCS#11 token (an HSM, a cloud HSM's PKCS#11 library, SoftHSM): found by
//! an RFC 7512 URI, used through C_Sign, never read out.
//!
//! Everything that can go wrong with a token (module missing, token absent, PIN wrong or locked,
//! sessions lost) is csr-warden's fault, not the requester's: callers turn a [`TokenError`] into
//! `CAUnavailable` and wait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// A signer's `ca.pkcs11` in the policy: which module, which key, and where its PIN is mounted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKeyConfig {
    /// The PKCS#11 module (shared library) to load.
    pub module: PathBuf,
    /// RFC 7512 URI naming the token and the private key.
    pub uri: String,
    /// A file holding the user PIN (a mounted Secret); a trailing newline is ignored.
    pub pin_file: PathBuf,
}

/// Open sessions per key at most: a session signs one thing at a time, and a token has few.
pub const MAX_SESSIONS: usize = 4;

/// How long a signature waits for a free session before the token is reported unavailable.
const SESSION_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UriError {
    #[error("{uri:?} is not a PKCS#11 URI: it must start with \"pkcs11:\" (RFC 7512)")]
    Scheme { uri: String },
    #[error(
        "PKCS#11 URI attribute {attribute:?} is not used by csr-warden; name the token with token=/manufacturer=/serial=/model=/slot-id= and the key with object=/id="
    )]
    UnknownAttribute { attribute: String },
    #[error(
        "PKCS#11 URI attribute {attribute:?} is not accepted: give the PIN in pinFile and the module in module, not in the URI"
    )]
    NotInUri { attribute: String },
    #[error("PKCS#11 URI attribute {attribute:?} is given twice; keep one")]
    Repeated { attribute: String },
    #[error("PKCS#11 URI attribute {attribute:?} has a bad %-escape; write a byte as %XX")]
    BadEscape { attribute: String },
    #[error("PKCS#11 URI attribute {attribute}={value:?} is not valid: {why}")]
    BadValue {
        attribute: String,
        value: String,
        why: &'static str,
    },
    #[error("PKCS#11 URI {uri:?} names no key: give object=<label> or id=<%-escaped bytes>")]
    NoKey { uri: String },
}

/// The parts of an RFC 7512 URI csr-warden uses to find one private key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
    /// CKA_LABEL of the key.
    pub object: Option<String>,
    /// CKA_ID of the key.
    pub id: Option<Vec<u8>>,
}

impl Pkcs11Uri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let Some(rest) = uri.strip_prefix("pkcs11:") else {
            return Err(UriError::Scheme {
                uri: uri.to_owned(),
            });
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parsed = Pkcs11Uri::default();
        let mut seen = std::collections::BTreeSet::new();
        for (attribute, value) in path
            .split(';')
            .chain(query.split('&'))
            .filter(|part| !part.is_empty())
            .map(|part| part.split_once('=').unwrap_or((part, "")))
        {
            if !seen.insert(attribute) {
                return Err(UriError::Repeated {
                    attribute: attribute.to_owned(),
                });
            }
            let bytes = percent_decode(value).ok_or_else(|| UriError::BadEscape {
                attribute: attribute.to_owned(),
            })?;
            let text = || {
                String::from_utf8(bytes.clone()).map_err(|_| UriError::BadValue {
                    attribute: attribute.to_owned(),
                    value: value.to_owned(),
                    why: "not UTF-8",
                })
            };
            match attribute {
                "token" => parsed.token = Some(text()?),
                "manufacturer" => parsed.manufacturer = Some(text()?),
                "serial" => parsed.serial = Some(text()?),
                "model" => parsed.model = Some(text()?),
                "object" => parsed.object = Some(text()?),
                "id" => parsed.id = Some(bytes),
                "slot-id" => {
                    parsed.slot_id = Some(text()?.parse().map_err(|_| UriError::BadValue {
                        attribute: attribute.to_owned(),
                        value: value.to_owned(),
                        why: "a slot-id is a decimal number",
                    })?)
                }
                "type" => {
                    if text()? != "private" {
                        return Err(UriError::BadValue {
                            attribute: attribute.to_owned(),
                            value: value.to_owned(),
                            why: "the CA key is a private key: type=private, or leave type out",
                        });
                    }
                }
                // One module per signer is named by `module`; what the module says about itself
                // does not narrow the search further.
                "library-manufacturer" | "library-description" | "library-version" => {}
                "pin-value" | "pin-source" | "module-name" | "module-path" => {
                    return Err(UriError::NotInUri {
                        attribute: attribute.to_owned(),
                    });
                }
                other => {
                    return Err(UriError::UnknownAttribute {
                        attribute: other.to_owned(),
                    });
                }
            }
        }
        if parsed.object.is_none() && parsed.id.is_none() {
            return Err(UriError::NoKey {
                uri: uri.to_owned(),
            });
        }
        Ok(parsed)
    }

    fn matches_token(&self, token: &cryptoki::slot::TokenInfo) -> bool {
        let same = |wanted: &Option<String>, have: &str| {
            wanted.as_deref().is_none_or(|w| w == have.trim_end())
        };
        same(&self.token, token.label())
            && same(&self.manufacturer, token.manufacturer_id())
            && same(&self.serial, token.serial_number())
            && same(&self.model, token.model())
    }
}

/// RFC 3986 %-decoding; None on a truncated or non-hex escape.
fn percent_decode(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    Some(out)
}

/// The kinds of token key csr-warden signs with, as the CA certificate's key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa,
    Ed25519,
}

impl TokenKeyKind {
    fn key_type(self) -> KeyType {
        match self {
            TokenKeyKind::EcdsaP256 | TokenKeyKind::EcdsaP384 => KeyType::EC,
            TokenKeyKind::Rsa => KeyType::RSA,
            TokenKeyKind::Ed25519 => KeyType::EC_EDWARDS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot load PKCS#11 module {module}: {message}; check ca.pkcs11.module and that the module is in the image or mounted"
    )]
    Module { module: PathBuf, message: String },
    #[error(
        "cannot read the PIN file {path}: {source}; check ca.pkcs11.pinFile and that the PIN Secret is mounted"
    )]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Uri(#[from] UriError),
    #[error(
        "no token matching {uri} in PKCS#11 module {module}; check that the token is present and initialised and the URI's token=/serial= name it"
    )]
    TokenNotFound { uri: String, module: PathBuf },
    #[error(
        "logging in to the token of {uri} failed: {rv}; check the PIN in {pin_file} (a locked PIN must be unlocked by the token's security officer)"
    )]
    Login {
        uri: String,
        pin_file: PathBuf,
        rv: String,
    },
    #[error(
        "no private key matching {uri} on its token; check object=/id= (pkcs11-tool --list-objects --login shows the keys)"
    )]
    KeyNotFound { uri: String },
    #[error("{count} private keys match {uri}; name one with both object= and id=")]
    KeyAmbiguous { uri: String, count: usize },
    #[error(
        "the key {uri} is a {found} key, but the CA certificate's key is {expected:?}; point the URI at the CA certificate's key"
    )]
    WrongKeyType {
        uri: String,
        found: String,
        expected: TokenKeyKind,
    },
    #[error("the token of {uri} failed during {during}: {rv}; csr-warden reopens it by itself")]
    Token {
        uri: String,
        during: &'static str,
        rv: String,
    },
    #[error(
        "all {MAX_SESSIONS} sessions of the token of {uri} stayed busy for {}s; the token is slow or hung",
        SESSION_WAIT.as_secs()
    )]
    Busy { uri: String },
}

/// One loaded module, shared by every key on it: PKCS#11 allows one C_Initialize per process.
/// Finalized when the last key using it is dropped, so a later open starts afresh (a module
/// that lost its tokens sees them again).
struct Module {
    path: PathBuf,
    context: Pkcs11,
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Err(error) = self.context.clone().finalize() {
            tracing::debug!(module = %self.path.display(), %error, "C_Finalize failed");
        }
    }
}

fn modules() -> &'static Mutex<BTreeMap<PathBuf, Weak<Module>>> {
    static MODULES: std::sync::OnceLock<Mutex<BTreeMap<PathBuf, Weak<Module>>>> =
        std::sync::OnceLock::new();
    MODULES.get_or_init(Default::default)
}

impl Module {
    fn open(path: &Path) -> Result<Arc<Module>, TokenError> {
        let mut loaded = modules().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = loaded.get(path).and_then(Weak::upgrade) {
            return Ok(module);
        }
        let failed = |message: String| TokenError::Module {
            module: path.to_owned(),
            message,
        };
        let context = Pkcs11::new(path).map_err(|e| failed(e.to_string()))?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another user of the same module in this process initialised it already.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
        let module = Arc::new(Module {
            path: path.to_owned(),
            context,
        });
        loaded.retain(|_, m| m.strong_count() > 0);
        loaded.insert(path.to_owned(), Arc::downgrade(&module));
        Ok(module)
    }
}

/// A logged-in session with the key found in it.
struct PooledSession {
    session: Session,
    key: ObjectHandle,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<PooledSession>,
    open: usize,
}

/// A private key on a token, signing through a bounded pool of logged-in sessions.
pub struct TokenKey {
    // Sessions close before the module is finalized (fields drop in order).
    pool: Mutex<PoolState>,
    freed: Condvar,
    /// Set when the token failed under a signature: the reload loop reopens it.
    broken: AtomicBool,
    kind: TokenKeyKind,
    uri: String,
    parsed: Pkcs11Uri,
    pin_file: PathBuf,
    pin: AuthPin,
    slot: Slot,
    module: Arc<Module>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.uri)
            .field("module", &self.module.path)
            .field("kind", &self.kind)
            .field("pin", &"<redacted>")
            .finish()
    }
}

impl TokenKey {
    /// Load the module, find the token and the key, log in: one session is opened here, so a
    /// token that cannot sign is known at load time.
    pub fn open(config: &TokenKeyConfig, kind: TokenKeyKind) -> Result<Self, TokenError> {
        let parsed = Pkcs11Uri::parse(&config.uri)?;
        let pin = read_pin(&config.pin_file)?;
        let module = Module::open(&config.module)?;
        let token_error = |during, e: CkError| TokenError::Token {
            uri: config.uri.clone(),
            during,
            rv: short(&e),
        };
        let slot = module
            .context
            .get_slots_with_token()
            .map_err(|e| token_error("C_GetSlotList", e))?
            .into_iter()
            .filter(|slot| parsed.slot_id.is_none_or(|id| slot.id() == id))
            .find(|slot| {
                module
                    .context
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.token_initialized() && parsed.matches_token(&info))
            })
            .ok_or_else(|| TokenError::TokenNotFound {
                uri: config.uri.clone(),
                module: config.module.clone(),
            })?;
        let key = TokenKey {
            pool: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
            broken: AtomicBool::new(false),
            kind,
            uri: config.uri.clone(),
            parsed,
            pin_file: config.pin_file.clone(),
            pin,
            slot,
            module,
        };
        let first = key.new_session()?;
        key.release(first, true);
        Ok(key)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// True once the token failed under a signature or a probe; a new TokenKey must be opened.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Sign `message` as X.509 wants it: a DER ECDSA-Sig-Value for ECDSA, the raw signature for
    /// RSA PKCS#1 v1.5 and Ed25519. One retry on a fresh session when a pooled one was lost.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let digest;
        let (mechanism, input) = match self.kind {
            // The digest is computed here: every token offers CKM_ECDSA, fewer its hashed forms.
            TokenKeyKind::EcdsaP256 => {
                digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
                (Mechanism::Ecdsa, digest.as_ref())
            }
            TokenKeyKind::EcdsaP384 => {
                digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, message);
                (Mechanism::Ecdsa, digest.as_ref())
            }
            TokenKeyKind::Rsa => (Mechanism::Sha256RsaPkcs, message),
            TokenKeyKind::Ed25519 => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                message,
            ),
        };
        let mut last = None;
        for _ in 0..2 {
            let pooled = match self.acquire() {
                Ok(pooled) => pooled,
                // Busy says nothing about the token; anything else is the token failing.
                Err(error @ TokenError::Busy { .. }) => return Err(error),
                Err(error) => {
                    self.broken.store(true, Ordering::SeqCst);
                    return Err(error);
                }
            };
            match pooled.session.sign(&mechanism, pooled.key, input) {
                Ok(signature) => {
                    self.release(pooled, true);
                    return match self.kind {
                        TokenKeyKind::EcdsaP256 | TokenKeyKind::EcdsaP384 => {
                            ecdsa_signature_der(&signature).ok_or_else(|| TokenError::Token {
                                uri: self.uri.clone(),
                                during: "C_Sign",
                                rv: format!(
                                    "an ECDSA signature of {} bytes is not r||s",
                                    signature.len()
                                ),
                            })
                        }
                        TokenKeyKind::Rsa | TokenKeyKind::Ed25519 => Ok(signature),
                    };
                }
                Err(error) => {
                    self.release(pooled, false);
                    last = Some(error);
                }
            }
        }
        self.broken.store(true, Ordering::SeqCst);
        Err(TokenError::Token {
            uri: self.uri.clone(),
            during: "C_Sign",
            rv: last.as_ref().map(short).unwrap_or_default(),
        })
    }

    /// Whether the token still answers and still holds the key, asked of an idle session (or
    /// a new one); marks the key broken when not. Skipped while every session is signing: that
    /// says as much.
    pub fn probe(&self) -> Result<(), TokenError> {
        let pooled = {
            let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            match state.idle.pop() {
                Some(pooled) => Some(pooled),
                None if state.open < MAX_SESSIONS => {
                    state.open += 1;
                    None
                }
                None => return Ok(()),
            }
        };
        let checked = match pooled {
            Some(pooled) => self.still_finds_key(&pooled).map(|()| pooled),
            None => self.new_session_uncounted().inspect_err(|_| {
                let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                state.open = state.open.saturating_sub(1);
            }),
        };
        match checked {
            Ok(pooled) => {
                self.release(pooled, true);
                Ok(())
            }
            Err(error) => {
                self.broken.store(true, Ordering::SeqCst);
                Err(error)
            }
        }
    }

    fn still_finds_key(&self, pooled: &PooledSession) -> Result<(), TokenError> {
        let failed = |during, e: CkError| TokenError::Token {
            uri: self.uri.clone(),
            during,
            rv: short(&e),
        };
        pooled
            .session
            .get_session_info()
            .map_err(|e| failed("C_GetSessionInfo", e))?;
        let found = pooled
            .session
            .find_objects(&self.key_template())
            .map_err(|e| failed("C_FindObjects", e))?;
        if !found.contains(&pooled.key) {
            return Err(TokenError::KeyNotFound {
                uri: self.uri.clone(),
            });
        }
        Ok(())
    }

    fn key_template(&self) -> Vec<Attribute> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(label) = &self.parsed.object {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        if let Some(id) = &self.parsed.id {
            template.push(Attribute::Id(id.clone()));
        }
        template
    }

    fn acquire(&self) -> Result<PooledSession, TokenError> {
        let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + SESSION_WAIT;
        loop {
            if let Some(pooled) = state.idle.pop() {
                return Ok(pooled);
            }
            if state.open < MAX_SESSIONS {
                state.open += 1;
                drop(state);
                let opened = self.new_session_uncounted();
                if opened.is_err() {
                    let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                    state.open -= 1;
                    self.freed.notify_one();
                }
                return opened;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(TokenError::Busy {
                    uri: self.uri.clone(),
                });
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Back to the pool, or closed (dropped) when it failed.
    fn release(&self, pooled: PooledSession, healthy: bool) {
        let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if healthy {
            state.idle.push(pooled);
        } else {
            state.open = state.open.saturating_sub(1);
            drop(pooled);
        }
        self.freed.notify_one();
    }

    /// A new session counted in the pool (for probes and the first session).
    fn new_session(&self) -> Result<PooledSession, TokenError> {
        {
            let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            state.open += 1;
        }
        let opened = self.new_session_uncounted();
        if opened.is_err() {
            let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            state.open = state.open.saturating_sub(1);
        }
        opened
    }

    fn new_session_uncounted(&self) -> Result<PooledSession, TokenError> {
        let token_error = |during, e: CkError| TokenError::Token {
            uri: self.uri.clone(),
            during,
            rv: short(&e),
        };
        let session = self
            .module
            .context
            .open_ro_session(self.slot)
            .map_err(|e| match e {
                CkError::Pkcs11(
                    RvError::SlotIdInvalid | RvError::TokenNotPresent | RvError::TokenNotRecognized,
                    _,
                ) => TokenError::TokenNotFound {
                    uri: self.uri.clone(),
                    module: self.module.path.clone(),
                },
                e => token_error("C_OpenSession", e),
            })?;
        // Login is per token for the whole process: a second session finds it done.
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(
                e @ CkError::Pkcs11(
                    RvError::PinIncorrect
                    | RvError::PinLocked
                    | RvError::PinExpired
                    | RvError::PinInvalid
                    | RvError::PinLenRange,
                    _,
                ),
            ) => {
                return Err(TokenError::Login {
                    uri: self.uri.clone(),
                    pin_file: self.pin_file.clone(),
                    rv: short(&e),
                });
            }
            Err(e) => return Err(token_error("C_Login", e)),
        }
        let found = session
            .find_objects(&self.key_template())
            .map_err(|e| token_error("C_FindObjects", e))?;
        let key = match found.as_slice() {
            [] => {
                return Err(TokenError::KeyNotFound {
                    uri: self.uri.clone(),
                });
            }
            [key] => *key,
            many => {
                return Err(TokenError::KeyAmbiguous {
                    uri: self.uri.clone(),
                    count: many.len(),
                });
            }
        };
        let attributes = session
            .get_attributes(key, &[AttributeType::KeyType])
            .map_err(|e| token_error("C_GetAttributeValue", e))?;
        let key_type = attributes.iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        });
        if key_type != Some(self.kind.key_type()) {
            return Err(TokenError::WrongKeyType {
                uri: self.uri.clone(),
                found: key_type.map(|t| t.to_string()).unwrap_or("unknown".into()),
                expected: self.kind,
            });
        }
        Ok(PooledSession { session, key })
    }
}

/// The PIN, without the newline an `echo` or editor leaves.
fn read_pin(path: &Path) -> Result<AuthPin, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(AuthPin::from(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// The return value's name (CKR_...), not the spec's paragraph cryptoki displays.
fn short(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("{rv:?} from {function}"),
        other => other.to_string(),
    }
}

/// PKCS#11 gives an ECDSA signature as r||s, each the size of the curve's order; X.509 wants
/// the DER ECDSA-Sig-Value SEQUENCE { r INTEGER, s INTEGER }.
pub fn ecdsa_signature_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 8);
    for half in [r, s] {
        let trimmed = match half.iter().position(|b| *b != 0) {
            Some(first) => &half[first..],
            None => &half[half.len() - 1..],
        };
        // A leading 1 bit would make the INTEGER negative: a zero byte goes before it.
        let pad = trimmed[0] & 0x80 != 0;
        body.push(0x02);
        der_length(&mut body, trimmed.len() + usize::from(pad));
        if pad {
            body.push(0);
        }
        body.extend_from_slice(trimmed);
    }
    let mut der = Vec::with_capacity(body.len() + 4);
    der.push(0x30);
    der_length(&mut der, body.len());
    der.extend_from_slice(&body);
    Some(der)
}

fn der_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_token_and_key() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=csr-warden;object=team%20ca;id=%01%02;slot-id=7;type=private?library-version=2",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("csr-warden"));
        assert_eq!(uri.object.as_deref(), Some("team ca"));
        assert_eq!(uri.id, Some(vec![1, 2]));
        assert_eq!(uri.slot_id, Some(7));
    }

    #[test]
    fn uri_refusals_say_what_to_do() {
        for (uri, says) in [
            ("token=x;object=y", "must start with"),
            ("pkcs11:token=x", "names no key"),
            ("pkcs11:object=y?pin-value=1234", "pinFile"),
            ("pkcs11:object=y;object=z", "given twice"),
            ("pkcs11:object=y;colour=red", "not used by csr-warden"),
            ("pkcs11:object=%zz", "%-escape"),
            ("pkcs11:object=y;type=public", "private key"),
            ("pkcs11:object=y;slot-id=one", "decimal"),
        ] {
            let error = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(error.contains(says), "{uri}: {error}");
        }
    }

    #[test]
    fn ecdsa_raw_becomes_der() {
        // r with its top bit set gets a zero byte; s with leading zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend([0u8; 31]);
        raw.push(0x05);
        let der = ecdsa_signature_der(&raw).unwrap();
        let mut expected = vec![0x30, 38, 0x02, 33, 0x00];
        expected.extend([0x80; 32]);
        expected.extend([0x02, 1, 0x05]);
        assert_eq!(der, expected);
        assert_eq!(ecdsa_signature_der(&[1, 2, 3]), None);
    }

    #[test]
    fn ecdsa_der_of_a_long_signature_uses_long_lengths() {
        // P-521: 66-byte halves make a body over 127 bytes.
        let raw = vec![0x01; 132];
        let der = ecdsa_signature_der(&raw).unwrap();
        assert_eq!(&der[..3], &[0x30, 0x81, 136]);
    }

    #[test]
    fn pin_loses_its_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, " 12 34\r\n").unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(read_pin(&path).unwrap().expose_secret(), " 12 34");
    }
}
