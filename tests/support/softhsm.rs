//! SoftHSM2 for the PKCS#11 tests: one token directory per test run (SOFTHSM2_CONF points at a
//! temporary config), a token per test, keys generated inside it (sensitive, never
//! extractable), and a CA certificate signed by the token for each.
//!
//! Absent SoftHSM, [`SoftHsm::get`] says SKIPPED and returns None; with CI=true it panics, so CI
//! never passes without running these tests.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use csr_warden::x509::pkcs11::{TokenKey, TokenKeyConfig, TokenKeyKind};

/// Where Debian and Ubuntu put the module (the softhsm2 package), and other distributions.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

pub const USER_PIN: &str = "4321-user";
const SO_PIN: &str = "8765-so";

pub struct SoftHsm {
    pub module: PathBuf,
    pub tokens: PathBuf,
    _dir: tempfile::TempDir,
}

/// Token initialisation and key generation one at a time: a new token directory is told apart
/// by what appeared, and this process's module is initialised by one user at a time.
static SERIAL: Mutex<()> = Mutex::new(());

impl SoftHsm {
    /// The test run's SoftHSM, set up on first use; None (SKIPPED) when it is not installed.
    pub fn get(test: &str) -> Option<&'static SoftHsm> {
        static HSM: OnceLock<Option<SoftHsm>> = OnceLock::new();
        let hsm = HSM.get_or_init(|| {
            // CSR_WARDEN_TEST_PKCS11_MODULE names the module where it is elsewhere.
            let module = match std::env::var_os("CSR_WARDEN_TEST_PKCS11_MODULE") {
                Some(path) => Some(PathBuf::from(path)),
                None => MODULE_CANDIDATES
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists()),
            }
            .filter(|p| p.exists())?;
            let util = std::process::Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !util {
                return None;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let tokens = dir.path().join("tokens");
            std::fs::create_dir(&tokens).expect("token dir");
            let conf = dir.path().join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                    tokens.display()
                ),
            )
            .expect("softhsm2.conf");
            // SoftHSM reads its config from the environment only. Set once, before any token
            // is made, and inherited by the csr-warden processes the tests start.
            // SAFETY: no other thread of this test binary reads SOFTHSM2_CONF.
            unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
            Some(SoftHsm {
                module,
                tokens,
                _dir: dir,
            })
        });
        match hsm {
            Some(hsm) => Some(hsm),
            None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
                "{test}: SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so); CI must run the PKCS#11 tests: apt-get install softhsm2"
            ),
            None => {
                eprintln!("SKIPPED {test}: SoftHSM2 is not installed (apt-get install softhsm2)");
                None
            }
        }
    }

    /// A new token labelled `label`, with its user PIN in `dir/<label>.pin`.
    pub fn token(&self, label: &str, dir: &Path) -> Token {
        let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<PathBuf> = self.token_dirs();
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let directory = self
            .token_dirs()
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the new token's directory");
        let pin_file = dir.join(format!("{label}.pin"));
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).expect("pin file");
        Token {
            label: label.to_owned(),
            directory,
            pin_file,
            module: self.module.clone(),
        }
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tokens)
            .expect("token dir")
            .flatten()
            .map(|e| e.path())
            .collect()
    }
}

pub struct Token {
    pub label: String,
    /// SoftHSM's directory of this token: moved away, the token is gone.
    pub directory: PathBuf,
    pub pin_file: PathBuf,
    pub module: PathBuf,
}

/// What a generated key looks like from outside the token.
#[derive(Debug)]
pub struct KeyAttributes {
    pub sensitive: bool,
    pub extractable: bool,
}

impl Token {
    pub fn uri(&self, object: &str) -> String {
        format!("pkcs11:token={};object={object};type=private", self.label)
    }

    pub fn config(&self, object: &str) -> TokenKeyConfig {
        TokenKeyConfig {
            module: self.module.clone(),
            uri: self.uri(object),
            pin_file: self.pin_file.clone(),
        }
    }

    /// `ca: {cert, pkcs11: {...}}` for a policy file.
    pub fn ca_yaml(&self, cert: &Path, object: &str) -> String {
        self.ca_yaml_with(cert, &self.module, object)
    }

    pub fn ca_yaml_with(&self, cert: &Path, module: &Path, object: &str) -> String {
        format!(
            "{{ cert: {}, pkcs11: {{ module: {}, uri: \"{}\", pinFile: {} }} }}",
            cert.display(),
            module.display(),
            self.uri(object),
            self.pin_file.display()
        )
    }

    /// Generate a key pair labelled `object` inside the token (C_GenerateKeyPair: the private
    /// key is sensitive and never extractable, so it never exists outside the token), and a
    /// self-signed CA certificate for it, signed by the token, written to `dir/<object>.crt`.
    pub fn generate_ca(
        &self,
        object: &str,
        kind: TokenKeyKind,
        dir: &Path,
    ) -> (PathBuf, KeyAttributes) {
        let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let (public_key, attributes) = self.generate(object, kind);
        // csr-warden's own token signing makes the CA certificate; openssl verifying it (and
        // what it issues) checks that signing independently.
        let key = TokenKey::open(&self.config(object), kind).expect("open the new key");
        let signer = TestTokenKey {
            key,
            public_key,
            algorithm: match kind {
                TokenKeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                TokenKeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                TokenKeyKind::Rsa => &rcgen::PKCS_RSA_SHA256,
                TokenKeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            },
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("csr-warden HSM CA {object}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.self_signed(&signer).expect("self-signed CA");
        let path = dir.join(format!("{object}.crt"));
        std::fs::write(&path, cert.pem()).expect("write CA certificate");
        (path, attributes)
    }

    /// C_GenerateKeyPair in a fresh module context of this process (finalized after), returning
    /// the public key as rcgen wants it and the private key's protection attributes.
    fn generate(&self, object: &str, kind: TokenKeyKind) -> (Vec<u8>, KeyAttributes) {
        let context = Pkcs11::new(&self.module).expect("load SoftHSM");
        // Initialised already when a token key of this process is open (the bench keeps its CAs):
        // then it is not finalized here either.
        let initialized_here =
            match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(()) => true,
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::CryptokiAlreadyInitialized,
                    _,
                )) => false,
                Err(error) => panic!("C_Initialize: {error}"),
            };
        let slot = context
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                context
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == self.label)
            })
            .expect("the token's slot");
        let result = {
            let session = context.open_rw_session(slot).expect("session");
            match session.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned()))) {
                // Logged in by an open token key of this process (the bench's CAs).
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => {}
                Err(error) => panic!("login: {error}"),
            }
            let label = Attribute::Label(object.as_bytes().to_vec());
            let id = Attribute::Id(object.as_bytes().to_vec());
            let private = vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                label.clone(),
                id.clone(),
            ];
            let mut public = vec![Attribute::Token(true), Attribute::Verify(true), label, id];
            let mechanism = match kind {
                TokenKeyKind::EcdsaP256 | TokenKeyKind::EcdsaP384 => {
                    // DER OIDs of prime256v1 and secp384r1.
                    public.push(Attribute::EcParams(match kind {
                        TokenKeyKind::EcdsaP256 => {
                            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
                        }
                        _ => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
                    }));
                    Mechanism::EccKeyPairGen
                }
                TokenKeyKind::Ed25519 => {
                    // id-Ed25519.
                    public.push(Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70]));
                    Mechanism::EccEdwardsKeyPairGen
                }
                TokenKeyKind::Rsa => {
                    public.push(Attribute::ModulusBits(2048.into()));
                    public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                    Mechanism::RsaPkcsKeyPairGen
                }
            };
            let (public_key, private_key) = session
                .generate_key_pair(&mechanism, &public, &private)
                .expect("C_GenerateKeyPair");
            let public_bytes = match kind {
                TokenKeyKind::Rsa => {
                    let values = session
                        .get_attributes(
                            public_key,
                            &[AttributeType::Modulus, AttributeType::PublicExponent],
                        )
                        .expect("RSA public key");
                    let part = |wanted: AttributeType| {
                        values
                            .iter()
                            .find(|a| a.attribute_type() == wanted)
                            .and_then(|a| match a {
                                Attribute::Modulus(v) | Attribute::PublicExponent(v) => {
                                    Some(v.clone())
                                }
                                _ => None,
                            })
                            .expect("RSA part")
                    };
                    rsa_public_key_der(
                        &part(AttributeType::Modulus),
                        &part(AttributeType::PublicExponent),
                    )
                }
                _ => {
                    let values = session
                        .get_attributes(public_key, &[AttributeType::EcPoint])
                        .expect("EC point");
                    let Some(Attribute::EcPoint(point)) = values.into_iter().next() else {
                        panic!("no CKA_EC_POINT");
                    };
                    // A DER OCTET STRING around the point (or the bare point, from some
                    // modules).
                    unwrap_octet_string(&point)
                }
            };
            let protection = session
                .get_attributes(
                    private_key,
                    &[AttributeType::Sensitive, AttributeType::Extractable],
                )
                .expect("private key attributes");
            let flag = |wanted: AttributeType| {
                protection.iter().any(|a| match a {
                    Attribute::Sensitive(v) if wanted == AttributeType::Sensitive => *v,
                    Attribute::Extractable(v) if wanted == AttributeType::Extractable => *v,
                    _ => false,
                })
            };
            (
                public_bytes,
                KeyAttributes {
                    sensitive: flag(AttributeType::Sensitive),
                    extractable: flag(AttributeType::Extractable),
                },
            )
        };
        if initialized_here {
            context.finalize().expect("C_Finalize");
        }
        result
    }
}

fn unwrap_octet_string(value: &[u8]) -> Vec<u8> {
    match value {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() => rest.to_vec(),
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest.to_vec(),
        _ => value.to_vec(),
    }
}

/// PKCS#1 RSAPublicKey: SEQUENCE { modulus INTEGER, publicExponent INTEGER }.
fn rsa_public_key_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let mut value = bytes.to_vec();
        if value.first().is_some_and(|b| b & 0x80 != 0) {
            value.insert(0, 0);
        }
        let mut out = vec![0x02];
        length(&mut out, value.len());
        out.extend(value);
        out
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
    }
    let body = [integer(modulus), integer(exponent)].concat();
    let mut out = vec![0x30];
    length(&mut out, body.len());
    out.extend(body);
    out
}

/// A token key as rcgen's signer of the test CA certificate.
struct TestTokenKey {
    key: TokenKey,
    public_key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for TestTokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for TestTokenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(msg).map_err(|e| {
            eprintln!("signing the test CA through the token: {e}");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// Hold while using the token from this test process (not through a csr-warden process): no
/// other test initialises or finalizes this process's module meanwhile.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
