//! `crypto`: argon2id password hashing, HMAC-SHA256 with host-held keys,
//! TOTP (RFC 6238) and random tokens, all done natively.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use wasmtime::component::{HasData, Linker};

use crate::bindings::HostError;
use crate::bindings::crypto::{AttemptCounter, Host, TotpParams};
use crate::bindings::types::Error;
use crate::capability::Capability;
use crate::caps::{CallCx, Caller, HasCall, Unit};
use crate::lanes::Lanes;
use crate::store::Store;
use crate::store::attempts::{MAX_COUNTERS, MAX_WINDOW_SECS};

type Answer<T> = Result<T, HostError>;

/// HMAC keys per (plugin, key name), created on first use, stored in the
/// host's metadata table and cached. Their bytes never reach a plugin.
pub struct KeyVault {
    db: Arc<Store>,
    cache: tokio::sync::Mutex<HashMap<KeyId, Arc<[u8; 32]>>>,
}

/// (plugin, key name).
type KeyId = (String, String);

impl KeyVault {
    pub fn new(db: Arc<Store>) -> Self {
        KeyVault {
            db,
            cache: Default::default(),
        }
    }

    /// The key `name` of `plugin`, created (durably) if it does not exist.
    pub async fn key(&self, plugin: &str, name: &str) -> Result<Arc<[u8; 32]>, Error> {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::Invalid("key names are 1 to 128 bytes".into()));
        }
        // Holding the cache lock across creation makes first use race-free.
        let mut cache = self.cache.lock().await;
        let id = (plugin.to_string(), name.to_string());
        if let Some(key) = cache.get(&id) {
            return Ok(key.clone());
        }
        let ns = format!("hmac-key/{plugin}");
        let unavailable = |e: crate::store::StoreError| Error::Unavailable(e.to_string());
        let stored = match self.db.meta_get(&ns, name).await.map_err(unavailable)? {
            Some(bytes) => bytes,
            None => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                self.db
                    .meta_set_once(&ns, name, key.to_vec())
                    .await
                    .map_err(unavailable)?
            }
        };
        let key: [u8; 32] = stored
            .try_into()
            .map_err(|_| Error::Unavailable(format!("stored key `{name}` is corrupt")))?;
        let key = Arc::new(key);
        cache.insert(id, key.clone());
        Ok(key)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac
}

/// The HOTP code (RFC 4226) for `counter`.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// The time step whose TOTP code equals `code` within `skew` steps of `now`.
pub fn totp_match(secret: &[u8], code: &str, params: &TotpParams, now: u64) -> Option<u64> {
    let step = now / u64::from(params.period);
    let skew = u64::from(params.skew);
    (step.saturating_sub(skew)..=step + skew).find(|s| {
        let expected = hotp(secret, *s, u32::from(params.digits));
        constant_time_eq(expected.as_bytes(), code.as_bytes())
    })
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What `crypto` sees of a call: the caller, the host's HMAC keys, the
/// counters of attempts and the CPU lanes (password hashing is CPU work
/// done for the plugin, shared out like its own).
pub struct CryptoView<'a> {
    caller: Caller<'a>,
    keys: &'a KeyVault,
    store: &'a Store,
    lanes: &'a Arc<Lanes>,
}

/// Links `crypto` to [`CryptoView`].
pub struct CryptoCap;

impl HasData for CryptoCap {
    type Data<'a> = CryptoView<'a>;
}

plugin_sees_errors!(CryptoView<'_>);

impl Unit for CryptoCap {
    fn view(call: &mut CallCx) -> CryptoView<'_> {
            let (caller, env, _) = call.split();
            CryptoView {
                caller,
                keys: &env.services.keys,
                store: &env.services.db,
                lanes: &env.services.lanes,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::crypto::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl CryptoView<'_> {
    /// Run argon2 (`work`) in this plugin's turn on a CPU lane, at the
    /// lanes' lower OS priority (`Lanes::run`): it takes tens of
    /// milliseconds of CPU, and a plugin asked to hash in a loop (logins,
    /// by anyone) must get no more of the CPU than one whose wasm loops.
    /// Waiting for the turn ends at the call's deadline.
    async fn on_a_lane<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HostError> {
        let plugin: Arc<str> = Arc::from(self.caller.plugin());
        let deadline = self.caller.deadline().into();
        match tokio::time::timeout_at(deadline, self.lanes.run(&plugin, work)).await {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(HostError::trap(wasmtime::Error::msg(
                "password hashing panicked",
            ))),
            Err(_) => Err(Error::Unavailable(
                "the host's CPU lanes stayed busy until this call's deadline; retry".into(),
            )
            .into()),
        }
    }
}

impl Host for CryptoView<'_> {
    async fn hash_password(&mut self, password: String) -> Answer<String> {
        self.caller.check(Capability::Crypto)?;
        let hashed = self
            .on_a_lane(move || {
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                argon2::Argon2::default()
                    .hash_password(password.as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .await?;
        Ok(hashed.map_err(|e| Error::Invalid(format!("cannot hash password: {e}")))?)
    }

    async fn verify_password(&mut self, password: String, hash: String) -> Answer<bool> {
        self.caller.check(Capability::Crypto)?;
        let verdict = self
            .on_a_lane(move || {
                let parsed = PasswordHash::new(&hash)
                    .map_err(|e| Error::Invalid(format!("not a PHC password hash: {e}")))?;
                Ok::<bool, Error>(
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await?;
        Ok(verdict?)
    }

    async fn sign(&mut self, key_name: String, data: Vec<u8>) -> Answer<Vec<u8>> {
        self.caller.check(Capability::Crypto)?;
        let key = self.keys.key(self.caller.plugin(), &key_name).await?;
        Ok(hmac_sha256(&key[..], &data)
            .finalize()
            .into_bytes()
            .to_vec())
    }

    async fn verify(&mut self, key_name: String, data: Vec<u8>, tag: Vec<u8>) -> Answer<bool> {
        self.caller.check(Capability::Crypto)?;
        let key = self.keys.key(self.caller.plugin(), &key_name).await?;
        Ok(hmac_sha256(&key[..], &data).verify_slice(&tag).is_ok())
    }

    async fn totp_verify(
        &mut self,
        secret: Vec<u8>,
        code: String,
        params: TotpParams,
    ) -> Answer<Option<u64>> {
        self.caller.check(Capability::Crypto)?;
        if !(6..=8).contains(&params.digits)
            || params.period == 0
            || params.skew > 10
            || secret.is_empty()
        {
            return Err(Error::Invalid(
                "TOTP needs 6 to 8 digits, a period above 0, a skew of at most 10 and a secret"
                    .into(),
            )
            .into());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(totp_match(&secret, &code, &params, now))
    }

    async fn random_bytes(&mut self, len: u32) -> Answer<Vec<u8>> {
        self.caller.check(Capability::Crypto)?;
        if len > 4096 {
            return Err(Error::Invalid("at most 4096 random bytes per call".into()).into());
        }
        let mut bytes = vec![0u8; len as usize];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Ok(bytes)
    }

    async fn random_token(&mut self, bytes: u32) -> Answer<String> {
        self.caller.check(Capability::Crypto)?;
        if !(1..=1024).contains(&bytes) {
            return Err(Error::Invalid("tokens are 1 to 1024 random bytes".into()).into());
        }
        let mut buf = vec![0u8; bytes as usize];
        rand::rngs::OsRng.fill_bytes(&mut buf);
        Ok(hex::encode(buf))
    }

    async fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> wasmtime::Result<bool> {
        Ok(constant_time_eq(&a, &b))
    }

    async fn take_attempt(
        &mut self,
        counters: Vec<AttemptCounter>,
        window_secs: u32,
    ) -> Answer<bool> {
        self.caller.check(Capability::Crypto)?;
        if counters.is_empty() || counters.len() > MAX_COUNTERS {
            return Err(Error::Invalid(format!(
                "an attempt is counted on 1 to {MAX_COUNTERS} counters"
            ))
            .into());
        }
        if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
            return Err(Error::Invalid(format!(
                "an attempt window is 1 to {MAX_WINDOW_SECS} seconds"
            ))
            .into());
        }
        let counters = counters
            .into_iter()
            .map(|c| attempt_key(c.key).map(|key| (key, c.limit)))
            .collect::<Result<Vec<_>, _>>()?;
        let window = std::time::Duration::from_secs(window_secs.into());
        let taken = self
            .store
            .take_attempt(self.caller.plugin(), &counters, window)
            .await;
        Ok(taken.map_err(|e| Error::Unavailable(e.to_string()))?)
    }

    async fn attempt_passed(&mut self, keys: Vec<String>) -> Answer<()> {
        self.caller.check(Capability::Crypto)?;
        if keys.len() > MAX_COUNTERS {
            return Err(Error::Invalid(format!("at most {MAX_COUNTERS} counters")).into());
        }
        let keys = keys
            .into_iter()
            .map(attempt_key)
            .collect::<Result<Vec<_>, _>>()?;
        let passed = self.store.attempt_passed(self.caller.plugin(), &keys).await;
        Ok(passed.map_err(|e| Error::Unavailable(e.to_string()))?)
    }
}

/// A counter's key, checked: 1..=1024 bytes.
fn attempt_key(key: String) -> Result<String, Error> {
    if key.is_empty() || key.len() > 1024 {
        return Err(Error::Invalid(
            "attempt counter keys are 1 to 1024 bytes".into(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotp_matches_rfc4226_vectors() {
        let secret = b"12345678901234567890";
        let expected = ["755224", "287082", "359152", "969429", "338314"];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(secret, counter as u64, 6), *code);
        }
    }

    #[test]
    fn totp_matches_rfc6238_vector_with_drift() {
        let secret = b"12345678901234567890";
        let params = TotpParams {
            digits: 8,
            period: 30,
            skew: 1,
        };
        // RFC 6238 appendix B: T = 59 s -> 94287082.
        assert_eq!(totp_match(secret, "94287082", &params, 59), Some(1));
        assert_eq!(
            totp_match(secret, "94287082", &params, 59 + 30),
            Some(1),
            "one step late"
        );
        assert_eq!(
            totp_match(secret, "94287082", &params, 59 + 60),
            None,
            "two steps late"
        );
        assert_eq!(totp_match(secret, "00000000", &params, 59), None);
    }
}
