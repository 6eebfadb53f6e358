//! The CSR decoder on arbitrary input: as PEM text, and as DER wrapped in a PEM block so the
//! fuzzer reaches the ASN.1 parser directly. Must never panic, hang or blow up memory.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = csr_warden::x509::inspect::inspect(data);
    let body = base64::engine::general_purpose::STANDARD.encode(data);
    let pem = format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n");
    let _ = csr_warden::x509::inspect::inspect(pem.as_bytes());
});
