//! The policy file parser and validator on arbitrary text. Must never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = csr_warden::policy::file::parse_policy(text, std::path::Path::new("fuzz.yaml"));
    }
});
