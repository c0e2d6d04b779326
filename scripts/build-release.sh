#!/usr/bin/env bash
# Builds the release `headcni` binary as deployed: statically linked (glibc crt-static), so a
# CNI invocation maps no shared libraries (less start-up work and peak RSS; see
# docs/performance.md). `--target` is explicit so that the flag reaches only the binary, not
# build scripts or proc-macros. Prints the path of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -p headcni-cli --target "$target" --quiet
echo "$PWD/target/$target/release/headcni"
