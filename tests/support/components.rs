//! Components from other toolchains, built by the tests from the
//! registries' packages, never committed: JavaScript with componentize-js
//! (npm, as plugins/sdk-js/package-lock.json pins it), Python with
//! componentize-py (PyPI, as tests/components/py-http/requirements.txt
//! pins it). Each is built in cargo's temporary folder for tests, once for
//! the contents of what it is built from: later test binaries and CI's
//! later passes use that build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// `tests/components` in the source tree.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/components")
}

/// The repository.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the tools and the built components live.
fn work() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("components");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `name` as `build(out)` builds it from `inputs` (files and folders),
/// once for their contents.
fn cached(name: &str, inputs: &[PathBuf], build: impl FnOnce(&Path)) -> PathBuf {
    let out = work().join(format!("{name}-{}.wasm", fingerprint(inputs)));
    if !out.exists() {
        let partial = out.with_extension("partial");
        build(&partial);
        std::fs::rename(&partial, &out).unwrap();
    }
    out
}

/// A hash of the names and contents of the files under `inputs`
/// (installed packages and caches left out).
fn fingerprint(inputs: &[PathBuf]) -> String {
    use sha2::{Digest, Sha256};
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        let name = path.file_name().unwrap_or_default();
        if name == "node_modules" || name == "__pycache__" {
            return;
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), files);
            }
        } else {
            files.push(path.to_path_buf());
        }
    }
    let mut files = Vec::new();
    for input in inputs {
        walk(input, &mut files);
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file).unwrap());
    }
    hex::encode(hash.finalize())[..16].to_string()
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

/// A folder with componentize-js installed as plugins/sdk-js pins it
/// (`npm ci`), and the build scripts copied beside it.
fn js_tools() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let tools = work().join("js-tools");
            std::fs::create_dir_all(&tools).unwrap();
            let sdk = root().join("plugins/sdk-js");
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(sdk.join(file), tools.join(file)).unwrap();
            }
            std::fs::copy(sdk.join("build.mjs"), tools.join("plugin-build.mjs")).unwrap();
            let http_build = sources().join("js-http/build.mjs");
            std::fs::copy(http_build, tools.join("http-build.mjs")).unwrap();
            let lock = [sdk.join("package-lock.json")];
            let installed = tools.join(format!("installed-{}", fingerprint(&lock)));
            if !installed.exists() {
                run(
                    Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                        .current_dir(&tools),
                    "npm ci (componentize-js)",
                );
                std::fs::write(&installed, b"").unwrap();
            }
            tools
        })
        .clone()
}

/// `tests/components/js-http` as a wasi:http component (a fetch-event
/// handler through componentize-js).
pub fn js_http() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tools = js_tools();
            let inputs = [
                sources().join("js-http"),
                sources().join("wit"),
                root().join("plugins/sdk-js/package-lock.json"),
            ];
            cached("js-http", &inputs, |out| {
                run(
                    Command::new("node")
                        .arg(tools.join("http-build.mjs"))
                        .arg(out)
                        .arg(sources().join("js-http"))
                        .current_dir(&tools),
                    "componentize-js (js-http)",
                )
            })
        })
        .clone()
}

/// `examples/hello-js` with the JavaScript SDK, as a Berth plugin.
pub fn js_hello() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tools = js_tools();
            let inputs = [
                root().join("examples/hello-js"),
                root().join("plugins/sdk-js"),
                root().join("wit"),
            ];
            cached("hello-js", &inputs, |out| {
                run(
                    Command::new("node")
                        .arg(tools.join("plugin-build.mjs"))
                        .arg(root().join("examples/hello-js/component.js"))
                        .arg(out)
                        .env("BERTH_REPO", root())
                        .current_dir(&tools),
                    "componentize-js (hello-js)",
                )
            })
        })
        .clone()
}

/// `tests/components/py-http` as a wasi:http component (componentize-py's
/// http proxy).
pub fn py_http() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let (wit, app) = (sources().join("wit"), sources().join("py-http"));
            let inputs = [wit.clone(), app.clone()];
            cached("py-http", &inputs, |out| {
                componentize_py(&wit, "http", std::slice::from_ref(&app), out)
            })
        })
        .clone()
}

/// `examples/hello-py` with the Python SDK (`plugins/sdk-py`), as a
/// Berth plugin.
pub fn py_hello() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| py_plugin("hello-py")).clone()
}

/// `examples/linkcheck-py` with the Python SDK, as a Berth plugin.
pub fn py_linkcheck() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| py_plugin("linkcheck-py")).clone()
}

/// `examples/EXAMPLE` with the Python SDK, as a Berth plugin.
fn py_plugin(example: &str) -> PathBuf {
    let app = [
        root().join("examples").join(example),
        root().join("plugins/sdk-py"),
    ];
    let wit = root().join("wit");
    let inputs = [app[0].clone(), app[1].clone(), wit.clone(), requirements()];
    cached(example, &inputs, |out| {
        componentize_py(&wit, "plugin", &app, out)
    })
}

/// The componentize-py version the tests use, pinned.
fn requirements() -> PathBuf {
    sources().join("py-http/requirements.txt")
}

/// `app` (the module `app` on the Python path `paths`) built against the
/// world `world` of the WIT in `wit`, with componentize-py as
/// [`requirements`] pins it (in a venv of the tests' own), into `out`.
fn componentize_py(wit: &Path, world: &str, paths: &[PathBuf], out: &Path) {
    // One venv, made by the first build.
    static VENV: Mutex<()> = Mutex::new(());
    let _venv = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let work = work();
    let venv = work.join("componentize-py");
    let installed = venv.join(format!("installed-{}", fingerprint(&[requirements()])));
    if !installed.exists() {
        run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            "python3 -m venv",
        );
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "-r"])
                .arg(requirements()),
            "pip install componentize-py",
        );
        std::fs::write(&installed, b"").unwrap();
    }
    let mut command = Command::new(venv.join("bin/componentize-py"));
    command
        .arg("-d")
        .arg(wit)
        .args(["-w", world, "componentize"]);
    for path in paths {
        command.arg("-p").arg(path);
    }
    run(
        command.arg("app").arg("-o").arg(out).current_dir(&work),
        "componentize-py",
    );
}
