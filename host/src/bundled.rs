//! `BUNDLED`: the plugins built by build.rs and shipped inside the binary,
//! and [`sync`], which keeps a plugins folder's copies of them up to date
//! across upgrades without undoing what the operator did to them.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The record, in the plugins folder, of the bundled files Berth wrote
/// there: one `SHA256  FILE` line each, as `sha256sum` prints them.
pub const RECORD: &str = ".bundled";

/// What [`sync`] did with one bundled plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The folder had no such file: written.
    Installed,
    /// The file was the one Berth wrote before, unchanged since: replaced
    /// by this binary's.
    Updated,
    /// The file is already this binary's.
    Current,
    /// Berth wrote it and the operator removed it: left out.
    Removed,
    /// The file is not one Berth wrote (the operator's own build, or one
    /// from a Berth that kept no record): left as it is.
    Kept,
}

/// Bring the bundled plugins in `dir` up to date with `bundled`, which is
/// [`BUNDLED`] outside tests. A file Berth wrote and nobody changed is
/// updated; one the operator replaced is kept, and one they removed stays
/// removed; one the folder never had is installed. Files are written
/// owner-only under a dot-name and renamed, so the folder's watcher never
/// mounts half a file.
pub fn sync(dir: &Path, bundled: &[(&str, &[u8])]) -> std::io::Result<Vec<(String, Synced)>> {
    std::fs::create_dir_all(dir)?;
    let record_path = dir.join(RECORD);
    let mut written = match std::fs::read_to_string(&record_path) {
        Ok(text) => parse_record(&text),
        Err(e) if e.kind() == ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    let mut synced = Vec::with_capacity(bundled.len());
    for (file, bytes) in bundled {
        let ours = digest(bytes);
        let path = dir.join(file);
        let on_disk = match std::fs::read(&path) {
            Ok(found) => Some(digest(&found)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let what = match (on_disk, written.get(*file)) {
            (None, Some(_)) => Synced::Removed,
            (Some(found), _) if found == ours => Synced::Current,
            (Some(found), Some(wrote)) if found != *wrote => Synced::Kept,
            (None, None) => Synced::Installed,
            (Some(_), Some(_)) => Synced::Updated,
            (Some(_), None) => Synced::Kept,
        };
        match what {
            Synced::Installed | Synced::Updated => {
                crate::private::write(&path, bytes)?;
                written.insert(file.to_string(), ours);
            }
            Synced::Current => {
                written.insert(file.to_string(), ours);
            }
            // The operator's file from now on: should they remove it, the
            // next start installs this binary's.
            Synced::Kept => {
                written.remove(*file);
            }
            Synced::Removed => {}
        }
        synced.push((file.to_string(), what));
    }
    let text: String = written
        .iter()
        .map(|(file, hash)| format!("{hash}  {file}\n"))
        .collect();
    crate::private::write(&record_path, text.as_bytes())?;
    Ok(synced)
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `SHA256  FILE` lines; anything else (an operator's edit gone wrong) is
/// skipped, which at worst treats a file as not written by Berth.
fn parse_record(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (hash, file) = line.split_once("  ")?;
            let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            hex.then(|| (file.trim().to_string(), hash.to_ascii_lowercase()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(dir: &Path, bundled: &[(&str, &[u8])]) -> Vec<Synced> {
        sync(dir, bundled)
            .unwrap()
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    #[test]
    fn a_new_folder_gets_every_plugin_and_a_record_sha256sum_can_check() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        let got = synced(&plugins, &[("a.wasm", b"a1"), ("b.wasm", b"b1")]);
        assert_eq!(got, [Synced::Installed, Synced::Installed]);
        assert_eq!(std::fs::read(plugins.join("a.wasm")).unwrap(), b"a1");
        let record = std::fs::read_to_string(plugins.join(RECORD)).unwrap();
        assert_eq!(
            record,
            format!("{}  a.wasm\n{}  b.wasm\n", digest(b"a1"), digest(b"b1"))
        );
        let names: Vec<_> = std::fs::read_dir(&plugins)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "no temporary files left: {names:?}");
    }

    #[test]
    fn an_upgrade_updates_what_berth_wrote_and_leaves_the_operators_choices() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let old: &[(&str, &[u8])] = &[
            ("same.wasm", b"s"),
            ("up.wasm", b"u1"),
            ("mine.wasm", b"m1"),
            ("gone.wasm", b"g1"),
        ];
        synced(p, old);
        std::fs::write(p.join("mine.wasm"), b"the operator's build").unwrap();
        std::fs::remove_file(p.join("gone.wasm")).unwrap();
        let new: &[(&str, &[u8])] = &[
            ("same.wasm", b"s"),
            ("up.wasm", b"u2"),
            ("mine.wasm", b"m2"),
            ("gone.wasm", b"g2"),
            ("added.wasm", b"n"),
        ];
        let got = synced(p, new);
        use Synced::*;
        assert_eq!(got, [Current, Updated, Kept, Removed, Installed]);
        assert_eq!(std::fs::read(p.join("up.wasm")).unwrap(), b"u2");
        assert_eq!(
            std::fs::read(p.join("mine.wasm")).unwrap(),
            b"the operator's build"
        );
        assert!(!p.join("gone.wasm").exists());
        assert_eq!(std::fs::read(p.join("added.wasm")).unwrap(), b"n");
        // The same binary again changes nothing.
        assert_eq!(synced(p, new), [Current, Current, Kept, Removed, Current]);
        // The operator removes their own build: the bundled one comes back.
        std::fs::remove_file(p.join("mine.wasm")).unwrap();
        assert_eq!(synced(p, new)[2], Installed);
        assert_eq!(std::fs::read(p.join("mine.wasm")).unwrap(), b"m2");
    }

    #[test]
    fn a_folder_from_before_the_record_keeps_what_differs_and_adopts_what_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("a.wasm"), b"a1").unwrap();
        std::fs::write(p.join("b.wasm"), b"an older b").unwrap();
        let got = synced(p, &[("a.wasm", b"a1"), ("b.wasm", b"b2"), ("c.wasm", b"c")]);
        assert_eq!(got, [Synced::Current, Synced::Kept, Synced::Installed]);
        assert_eq!(std::fs::read(p.join("b.wasm")).unwrap(), b"an older b");
        // A record line mangled by hand is only skipped.
        std::fs::write(p.join(RECORD), "not a hash  a.wasm\n").unwrap();
        assert_eq!(synced(p, &[("a.wasm", b"a1")]), [Synced::Current]);
    }
}
