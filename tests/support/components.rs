//! Components from other toolchains, built by the tests from the
//! registries' packages at the versions pinned in `tests/components/`
//! (npm's package-lock.json, pip's requirements.txt), never committed:
//! JavaScript with componentize-js, Python with componentize-py. Each is
//! built once per test binary, in cargo's temporary folder for tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// `tests/components` in the source tree.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/components")
}

/// Where the tools and the built components live.
fn work() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("components");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Copy `from` (a folder) to `to`, replacing what was there but keeping
/// `to/node_modules`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `tests/components/js-http` as a wasi:http component (a fetch-event
/// handler through componentize-js).
pub fn js_http() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let work = work();
            copy_tree(&sources().join("wit"), &work.join("wit"));
            let dir = work.join("js-http");
            copy_tree(&sources().join("js-http"), &dir);
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir),
                "npm ci (componentize-js)",
            );
            let out = work.join("js-http.wasm");
            run(
                Command::new("node")
                    .arg("build.mjs")
                    .arg(&out)
                    .current_dir(&dir),
                "componentize-js",
            );
            out
        })
        .clone()
}

/// `tests/components/py-http` as a wasi:http component (componentize-py's
/// http proxy).
pub fn py_http() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let wit = sources().join("wit");
            let app = [sources().join("py-http")];
            componentize_py(&wit, "http", &app, "py-http.wasm")
        })
        .clone()
}

/// `examples/hello-py` with the Python SDK (`plugins/sdk-py`), as a
/// Berth plugin.
pub fn py_hello() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let app = [root.join("examples/hello-py"), root.join("plugins/sdk-py")];
            componentize_py(&root.join("wit"), "plugin", &app, "hello-py.wasm")
        })
        .clone()
}

/// `app` (the module `app` on the Python path `paths`) built against the
/// world `world` of the WIT in `wit`, with componentize-py at the version
/// in tests/components/py-http/requirements.txt, into `file`.
fn componentize_py(wit: &Path, world: &str, paths: &[PathBuf], file: &str) -> PathBuf {
    // One venv, made by the first build.
    static VENV: Mutex<()> = Mutex::new(());
    let _venv = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let work = work();
    let venv = work.join("componentize-py");
    let tool = venv.join("bin/componentize-py");
    if !tool.exists() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "-r"])
                .arg(sources().join("py-http/requirements.txt")),
            "pip install componentize-py",
        );
    }
    let out = work.join(file);
    let mut command = Command::new(&tool);
    command
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize"]);
    for path in paths {
        command.arg("-p").arg(path);
    }
    run(
        command.arg("app").arg("-o").arg(&out).current_dir(&work),
        "componentize-py",
    );
    out
}
