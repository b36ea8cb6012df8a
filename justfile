# Shortcuts for humans. Every recipe is a plain command you can run without just.

# Run berth with the bundled plugins on the embedded defaults.
run:
    rustup target add wasm32-wasip2 && cargo run --release -- serve

# The test suite, exactly as CI and the README run it.
test:
    rustup target add wasm32-wasip2 && cargo test --release && cargo test --manifest-path plugins/Cargo.toml -p berth-sdk -p commands -p droplets -p stacks -p beacons

# Format and lint everything, as CI does.
check:
    cargo fmt --all -- --check
    cd plugins && cargo fmt --all -- --check
    cargo clippy --release --all-targets -- -D warnings
    cd plugins && cargo clippy --release --target wasm32-wasip2 --all-targets -- -D warnings

# Build the plugins alone (host/build.rs also does this).
plugins:
    cd plugins && cargo build --release --target wasm32-wasip2
    cd examples/hello && cargo build --release --target wasm32-wasip2

# The benchmarks (berth needs wrk: apt-get install wrk; droplets and
# stacks and beacons start private dockerds, as the tests do).
bench:
    cargo bench --profile dist --bench berth
    cargo bench --profile dist --bench commands
    cargo bench --profile dist --bench droplets
    cargo bench --profile dist --bench stacks
    cargo bench --profile dist --bench beacons
    cargo bench --profile dist --bench concurrency
