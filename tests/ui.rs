//! Golden files: each input under `tests/ui/` beside the answer it must
//! get (as Spin's `crates/manifest/tests/ui`).
//!
//! - `config/NAME.toml`: the config file; `NAME.out` holds the error
//!   `berth` prints for it, or `ok`.
//! - `manifest/NAME.json`: a plugin manifest (the WIT record as JSON);
//!   `NAME.out` holds why the host refuses it, or `ok`.
//!
//! `BERTH_BLESS=1 cargo test --release --test ui` writes the `.out` files
//! from what the host says now; review the diff before committing it.

use std::path::{Path, PathBuf};

use berth::bindings::Manifest;
use berth::bindings::types::Route;
use berth::config::Config;
use serde::Deserialize;

fn cases(kind: &str, extension: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/ui")
        .join(kind);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no cases in {}", dir.display());
    inputs
}

/// Compare each case's answer with its `.out` file (or write it when
/// blessing); report every mismatch at once.
fn check(inputs: Vec<PathBuf>, answer: impl Fn(&Path) -> String) {
    let bless = std::env::var("BERTH_BLESS").is_ok_and(|v| v == "1");
    let mut wrong = Vec::new();
    for input in inputs {
        let got = answer(&input);
        let expected_path = input.with_extension("out");
        if bless {
            std::fs::write(&expected_path, format!("{}\n", got.trim_end())).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!("{} is missing (bless to write it)", expected_path.display())
        });
        if expected.trim_end() != got.trim_end() {
            wrong.push(format!(
                "{}:\n  expected: {}\n  got:      {got}",
                input.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "answers differ from the golden files:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn config_files() {
    check(cases("config", "toml"), |input| {
        let text = std::fs::read_to_string(input).unwrap();
        let name = input.file_name().unwrap();
        match Config::from_toml_str(&text, Path::new(name)) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        }
    });
}

/// A manifest as the WIT record, in JSON.
#[derive(Deserialize)]
struct ManifestJson {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    routes: Vec<RouteJson>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    openapi: Option<String>,
}

#[derive(Deserialize)]
struct RouteJson {
    id: String,
    method: String,
    path: String,
}

#[test]
fn plugin_manifests() {
    check(cases("manifest", "json"), |input| {
        let m: ManifestJson = serde_json::from_str(&std::fs::read_to_string(input).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let manifest = Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            routes: m
                .routes
                .into_iter()
                .map(|r| Route {
                    id: r.id,
                    method: r.method,
                    path: r.path,
                })
                .collect(),
            capabilities: m.capabilities,
            openapi: m.openapi,
        };
        match berth::plugins::check_manifest(&manifest) {
            Ok(_) => "ok".to_string(),
            Err(e) => e,
        }
    });
}
