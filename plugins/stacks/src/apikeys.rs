//! Docker Cloud API keys as stored (only an HMAC of each key): what
//! `berth run stacks apikey:*` manages, the Basic auth guard checks, and
//! services with `roles: ["global"]` get.

use berth_sdk::{crypto, kv, time};
use serde::{Deserialize, Serialize};

/// Host-held HMAC key API keys are stored under.
const KEY_NAME: &str = "stacks-apikey";

#[derive(Serialize, Deserialize)]
pub struct ApiKey {
    pub user: String,
    pub created: String,
    /// The service this key was made for (`roles`), if any.
    #[serde(default)]
    pub service: Option<String>,
}

pub fn digest(user: &str, key: &str) -> Result<String, berth_sdk::Error> {
    let tag = crypto::sign(KEY_NAME, format!("{user}:{key}").as_bytes())?;
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

/// Make an API key for `user`; returns (key, digest).
pub fn make_key(user: &str, service: Option<&str>) -> Result<(String, String), berth_sdk::Error> {
    let key = crypto::random_token(20)?;
    let d = digest(user, &key)?;
    kv::set_json(
        &format!("apikey/{d}"),
        &ApiKey {
            user: user.to_string(),
            created: time::now_rfc3339(),
            service: service.map(str::to_string),
        },
    )?;
    Ok((key, d))
}
