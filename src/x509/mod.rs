//! Certificates, pure: reading a request strictly ([`inspect`]), the signing CA ([`ca`]), and
//! turning an approved request into a certificate ([`issue`], written by [`encoding`]).

pub mod ca;
mod encoding;
pub mod inspect;
pub mod issue;
pub mod validity;
