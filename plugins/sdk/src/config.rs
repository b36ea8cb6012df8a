//! The plugin's settings from the operator's config file
//! (`[plugins.NAME.settings]`).

use crate::Error;
use crate::host::config as raw;

/// One setting as text (non-string TOML values come as JSON text).
pub fn get(key: &str) -> Result<Option<String>, Error> {
    raw::get(key)
}

/// One setting parsed into `T`, or `default` when unset. A set but
/// unparsable value is an `Invalid` error naming the key.
pub fn get_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T, Error> {
    match raw::get(key)? {
        None => Ok(default),
        Some(text) => text
            .trim_matches('"')
            .parse()
            .map_err(|_| Error::Invalid(format!("setting `{key}` has a bad value: {text}"))),
    }
}

/// Every setting, sorted by key.
pub fn all() -> Result<Vec<(String, String)>, Error> {
    raw::get_all()
}
