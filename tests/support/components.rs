//! Components from other toolchains, built by the tests from the
//! registries' packages, never committed: JavaScript with componentize-js
//! (npm, as plugins/sdk-js/package-lock.json pins it), Python with
//! componentize-py (PyPI, as tests/components/py-http/requirements.txt
//! pins it). Each is built once per test binary, in cargo's temporary
//! folder for tests.

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
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&tools),
                "npm ci (componentize-js)",
            );
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
            let out = work().join("js-http.wasm");
            run(
                Command::new("node")
                    .arg(tools.join("http-build.mjs"))
                    .arg(&out)
                    .arg(sources().join("js-http"))
                    .current_dir(&tools),
                "componentize-js (js-http)",
            );
            out
        })
        .clone()
}

/// `examples/hello-js` with the JavaScript SDK, as a Berth plugin.
pub fn js_hello() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tools = js_tools();
            let out = work().join("hello-js.wasm");
            run(
                Command::new("node")
                    .arg(tools.join("plugin-build.mjs"))
                    .arg(root().join("examples/hello-js/component.js"))
                    .arg(&out)
                    .env("BERTH_REPO", root())
                    .current_dir(&tools),
                "componentize-js (hello-js)",
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
            let app = [
                root().join("examples/hello-py"),
                root().join("plugins/sdk-py"),
            ];
            componentize_py(&root().join("wit"), "plugin", &app, "hello-py.wasm")
        })
        .clone()
}

/// `examples/linkcheck-py` with the Python SDK, as a Berth plugin.
pub fn py_linkcheck() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let app = [
                root().join("examples/linkcheck-py"),
                root().join("plugins/sdk-py"),
            ];
            componentize_py(&root().join("wit"), "plugin", &app, "linkcheck-py.wasm")
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
