//! Builds the plugins (the `plugins/` workspace and `examples/hello`) for
//! wasm32-wasip2, so a plain `cargo build` or `cargo test` of the host has
//! them. `hello`, `commands`, `droplets` and `stacks` are bundled into the binary; every built plugin's path is
//! given to the tests as `BERTH_TEST_PLUGINS`.
//!
//! The nested cargo gets its own target directory (no lock contention with
//! the outer build) and no inherited RUSTFLAGS (which are for the host). It
//! runs in the built workspace's folder, since cargo finds `.cargo/config.toml`
//! from its working directory: the plugins' wasm stack size is set there.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is TARGET_DIR/PROFILE/build/berth-HASH/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("wasm-plugins");

    for path in [
        "wit",
        "plugins/sdk",
        "plugins/commands",
        "plugins/droplets",
        "plugins/stacks",
        "plugins/beacons",
        "plugins/fixtures",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/.cargo/config.toml",
        "examples/hello/src",
        "examples/hello/openapi.json",
        "examples/hello/Cargo.toml",
        "examples/hello/Cargo.lock",
        "examples/hello/.cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    check_target();
    build(&root.join("plugins/Cargo.toml"), &target_dir);
    build(&root.join("examples/hello/Cargo.toml"), &target_dir);

    let built = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=BERTH_TEST_PLUGINS={}", built.display());

    let bundled = ["hello", "commands", "droplets", "stacks", "beacons"];
    let mut source = String::from(
        "/// Plugins shipped inside the binary: (file name, bytes).\npub const BUNDLED: &[(&str, &[u8])] = &[\n",
    );
    for name in bundled {
        let wasm = built.join(format!("{name}.wasm"));
        let copy = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&wasm, &copy)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", wasm.display()));
        source.push_str(&format!(
            "    (\"{name}.wasm\", include_bytes!({:?})),\n",
            copy.display().to_string()
        ));
    }
    source.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), source).expect("write bundled.rs");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

/// Fail early, with the fix, when the wasm target is missing.
fn check_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("run rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .exists()
    {
        panic!(
            "\n\nThe Rust target {TARGET} is not installed; the plugins need it.\n\
             Install it with:  rustup target add {TARGET}\n\n"
        );
    }
}

fn build(manifest: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(manifest)
        .current_dir(manifest.parent().expect("a manifest is in a folder"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", manifest.display()));
    if !status.success() {
        panic!(
            "building the plugins in {} failed (see the output above)",
            manifest.display()
        );
    }
}
