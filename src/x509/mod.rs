//! Certificates, pure: reading a request strictly ([`inspect`]), the signing CA ([`ca`]; its key
//! a file, or kept in a PKCS#11 token by [`pkcs11`]), and turning an approved request into a
//! certificate ([`issue`], written by [`encoding`]).

pub mod ca;
mod encoding;
pub mod inspect;
pub mod issue;
pub mod pkcs11;
pub mod validity;
