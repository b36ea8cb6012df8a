//! The host's modules are layered one way: a module names only modules of
//! the layers below its own. The layers are listed once, in the numbered
//! list of `host/src/lib.rs`'s documentation; this test reads them there.
//!
//! Every file of `host/src` is parsed (`syn`): each `use` tree (groups,
//! `self::`, `super::`, nested folders and inline modules resolved), each
//! path in code and types, and each `crate::` inside a macro's tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layers, bottom first: the backticked module names of each numbered
/// item of lib.rs's documentation, and every top-level module declared.
fn layers() -> (Vec<BTreeSet<String>>, BTreeSet<String>) {
    let text = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let file = syn::parse_file(&text).unwrap();
    let declared: BTreeSet<String> = file
        .items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect();
    let mut layers: Vec<BTreeSet<String>> = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("//!")) {
        let line = line.trim();
        let numbered = line
            .split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if numbered {
            layers.push(BTreeSet::new());
        } else if line.is_empty() || layers.is_empty() {
            continue;
        }
        let layer = layers.last_mut().unwrap();
        for (i, quoted) in line.split('`').enumerate() {
            if i % 2 == 1 && declared.contains(quoted) {
                layer.insert(quoted.to_string());
            }
        }
    }
    (layers, declared)
}

/// The module path of the file at `relative` (to `src`): `caps/mod.rs` is
/// `caps`, `caps/docker/wire.rs` is `caps::docker::wire`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if path
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        path.pop();
    }
    path
}

/// Collects the top-level modules a file's code names.
struct Names {
    /// The module the visitor is in (the file's, then inline `mod`s).
    here: Vec<String>,
    named: BTreeSet<String>,
}

impl Names {
    /// Note a path of `segments`, as written in module `self.here`.
    fn path(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut at: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" | "super" => self.here.clone(),
            _ => return, // An external crate, a prelude or local name.
        };
        let mut rest = segments.iter().skip(1).peekable();
        if first == "super" {
            at.pop();
        }
        while rest.peek().is_some_and(|s| *s == "super") {
            at.pop();
            rest.next();
        }
        match at.first() {
            Some(top) => {
                self.named.insert(top.clone());
            }
            None => {
                if let Some(top) = rest.next() {
                    self.named.insert(top.clone());
                }
            }
        }
    }

    /// Every path a `use` tree brings in, from `prefix`.
    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.path(prefix),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.tree(prefix, tree);
                }
            }
        }
    }

    /// `crate :: name` (and `super ::` chains) inside a macro's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (tokens.get(j), tokens.get(j + 1))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        match tokens.get(j + 2) {
                            Some(TokenTree::Ident(next)) => segments.push(next.to_string()),
                            _ => break,
                        }
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.path(&segments);
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.path(&segments);
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.here.push(item.ident.to_string());
        visit::visit_item_mod(self, item);
        self.here.pop();
    }
}

/// The top-level modules the code of the file at `relative` names.
fn named(relative: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(src().join(relative)).unwrap();
    let file = syn::parse_file(&text)
        .unwrap_or_else(|e| panic!("{}: does not parse: {e}", relative.display()));
    let mut names = Names {
        here: module_path(relative),
        named: BTreeSet::new(),
    };
    names.visit_file(&file);
    names.named
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
    let (layers, declared) = layers();
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let listed: BTreeSet<String> = layer_of.keys().map(|m| m.to_string()).collect();
    assert_eq!(
        listed, declared,
        "lib.rs's numbered list of layers names each module it declares"
    );
    assert_eq!(
        layers.iter().map(BTreeSet::len).sum::<usize>(),
        listed.len(),
        "each module is in one layer"
    );
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(src()).unwrap();
        let Some(top) = module_path(relative).first().cloned() else {
            continue; // lib.rs, main.rs
        };
        let mine = layer_of[top.as_str()];
        for name in named(relative) {
            let Some(&theirs) = layer_of.get(name.as_str()) else {
                continue; // An item of lib.rs (`App`, `BUNDLED`).
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
}

/// ARCHITECTURE.md's table of layers says what lib.rs's list does.
#[test]
fn the_architecture_table_shows_the_same_layers() {
    let (layers, _) = layers();
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    let table: Vec<BTreeSet<String>> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let numbered = cells.len() > 3 && cells[1].parse::<usize>().is_ok();
            numbered.then(|| {
                cells[2]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect()
            })
        })
        .collect();
    assert_eq!(
        table, layers,
        "ARCHITECTURE.md's layers table against lib.rs"
    );
}

/// The parser sees what the old line scan missed.
#[test]
fn the_checker_sees_groups_super_paths_and_macros() {
    let check = |here: &[&str], code: &str| {
        let file = syn::parse_file(code).unwrap();
        let mut names = Names {
            here: here.iter().map(|s| s.to_string()).collect(),
            named: BTreeSet::new(),
        };
        names.visit_file(&file);
        names.named
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        check(
            &["caps", "kv"],
            "use crate::{\n    store::Txn,\n    web::{Body, Head},\n};"
        ),
        set(&["store", "web"])
    );
    // `super::super::` from caps/docker/wire.rs is `crate::caps`.
    assert_eq!(
        check(&["caps", "docker", "wire"], "use super::super::CallCx;"),
        set(&["caps"])
    );
    assert_eq!(
        check(&["store"], "fn f() { let _ = crate::dispatch::run(); }"),
        set(&["dispatch"])
    );
    assert_eq!(
        check(
            &["store"],
            "fn f() { tracing::info!(x = ?crate::app::App::NAME); }"
        ),
        set(&["app"])
    );
    assert_eq!(
        check(&["net"], "mod inner { use super::super::server::Server; }"),
        set(&["server"])
    );
    assert_eq!(
        check(&["net"], "use std::io; use self::x::Y;"),
        set(&["net"])
    );
}
