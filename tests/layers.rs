//! The host's modules are layered one way (see `host/src/lib.rs`): a
//! module names (`crate::...`) only modules of the layers below its own.

use std::collections::BTreeSet;
use std::path::Path;

/// The layers, bottom first, as `host/src/lib.rs` lists them.
const LAYERS: &[&[&str]] = &[
    &[
        "net",
        "store",
        "lanes",
        "metrics",
        "router",
        "openapi",
        "private",
        "web",
        "capability",
    ],
    &["config", "bindings", "budget", "bundled", "replicas"],
    &["caps"],
    &["runtime"],
    &["plugins"],
    &["jobs", "fleet"],
    &["app"],
    &["streams", "admin"],
    &["dispatch"],
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules the code of `path` names, comments left out.
fn named(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                names.extend(
                    group
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap().to_string()),
                );
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_only_use_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(mine) = layer_of(&top) else {
            panic!("module `{top}` is in no layer: add it to host/src/lib.rs and LAYERS");
        };
        seen.insert(top.clone());
        for name in named(file) {
            let Some(theirs) = layer_of(&name) else {
                continue; // An item of lib.rs (`App`, `BUNDLED`) or a macro path.
            };
            if name != top && theirs >= mine {
                wrong.push(format!(
                    "{} uses `{name}` (layer {}), from layer {}",
                    relative.display(),
                    theirs + 1,
                    mine + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
    let listed: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|m| m.to_string()))
        .collect();
    assert_eq!(seen, listed, "LAYERS lists exactly the modules of host/src");
}
