//! `BUNDLED`: the plugins built by build.rs and shipped inside the binary.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
