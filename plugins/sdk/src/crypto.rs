//! Cryptography done by the host: password hashing, HMAC with host-held
//! keys, TOTP, random tokens.

use crate::Error;
use crate::host::crypto as raw;

pub use raw::TotpParams;

/// Hash a password (argon2id); store the returned PHC string.
pub fn hash_password(password: &str) -> Result<String, Error> {
    raw::hash_password(password)
}

/// Check a password against a stored PHC string.
pub fn verify_password(password: &str, hash: &str) -> Result<bool, Error> {
    raw::verify_password(password, hash)
}

/// HMAC-SHA256 of `data` under the host-held key `key_name`.
pub fn sign(key_name: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    raw::sign(key_name, data)
}

/// Check an HMAC-SHA256 tag made by [`sign`], in constant time.
pub fn verify(key_name: &str, data: &[u8], tag: &[u8]) -> Result<bool, Error> {
    raw::verify(key_name, data, tag)
}

/// Check a 6-digit, 30-second TOTP code with one step of drift either side.
/// Returns the matched time step (store it to refuse reuse) or None.
pub fn totp_verify(secret: &[u8], code: &str) -> Result<Option<u64>, Error> {
    raw::totp_verify(
        secret,
        code,
        TotpParams {
            digits: 6,
            period: 30,
            skew: 1,
        },
    )
}

/// Random bytes from the host's CSPRNG.
pub fn random_bytes(len: u32) -> Result<Vec<u8>, Error> {
    raw::random_bytes(len)
}

/// A random lower-case hex token of `bytes` random bytes.
pub fn random_token(bytes: u32) -> Result<String, Error> {
    raw::random_token(bytes)
}

/// Constant-time equality of two byte strings.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    raw::constant_time_eq(a, b)
}

/// Count an attempt at a secret on each of `counters` (key, limit per
/// window) before checking it: true when it took a slot on every one,
/// false when one is at its limit (do not check the secret then). Not
/// part of the call's transaction. [`crate::attempts`] builds logins on it.
pub fn take_attempt(counters: &[(&str, u32)], window_secs: u32) -> Result<bool, Error> {
    let counters: Vec<raw::AttemptCounter> = counters
        .iter()
        .map(|(key, limit)| raw::AttemptCounter {
            key: key.to_string(),
            limit: *limit,
        })
        .collect();
    raw::take_attempt(&counters, window_secs)
}

/// The attempt counted on `keys` succeeded: give back its slots.
pub fn attempt_passed(keys: &[&str]) -> Result<(), Error> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    raw::attempt_passed(&keys)
}
