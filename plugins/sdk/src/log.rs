//! Structured logging through the host, tagged with plugin and request id.

use crate::host::log as raw;

pub use raw::Level;

/// Log `message` at `level` with extra fields.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw::log(level, message, &fields);
}

/// Log at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message, &[]);
}

/// Log at info level.
pub fn info(message: &str) {
    log(Level::Info, message, &[]);
}

/// Log at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message, &[]);
}

/// Log at error level.
pub fn error(message: &str) {
    log(Level::Error, message, &[]);
}

/// Log a formatted line at info level: `berth_sdk::info!("{} ready", name)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&format!($($arg)*)) };
}

/// Log a formatted line at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&format!($($arg)*)) };
}

/// Log a formatted line at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&format!($($arg)*)) };
}

/// Log a formatted line at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&format!($($arg)*)) };
}
