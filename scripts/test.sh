#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs formatting, lints, the
# whole test suite (unit, property, real-namespace integration and interop tests), the Helm
# chart's check and a short fuzzing run of every fuzz target. Needs root (network namespaces,
# veth, bridges).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each fuzz target runs this long (issue 8: long enough to matter in CI; longer runs: set it).
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"

if [[ $EUID -ne 0 ]]; then
    echo "scripts/test.sh: run as root (the integration tests create network namespaces)" >&2
    exit 1
fi

# Debian packages: reference CNI plugins (interop and chaining tests), iproute2, nftables,
# iptables (used by the reference portmap plugin), iputils-ping (pod-to-pod checks), prometheus
# (promtool); for the multi-node lab wireguard-go + wireguard-tools (userspace WireGuard: the
# kernel may have no module) and iperf3; for the real-runtime tests podman, runc, containerd and
# busybox-static (the rootfs of locally built images; no registry is used), and
# protobuf-compiler (protoc: the CRI client crate k8s-cri generates its gRPC code at build time).
need=()
for pkg in containernetworking-plugins iproute2 nftables iptables iputils-ping prometheus \
    wireguard-go wireguard-tools iperf3 podman runc containerd busybox-static protobuf-compiler; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "== installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo-fuzz >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]]; then
    echo "== installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test" >&2
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --quiet --no-fail-fast -- --test-threads=4 2>&1 | tee "$test_log"

# The lab's end-to-end scenarios again with every node's daemon run from the container image,
# as deploy/headcni.yaml's DaemonSet runs it (`headcni lab up --image`): proves the manifest's
# host paths, mounts and environment, not just its schema. Daemon-mode scenarios follow
# deploy/headcni-daemon-mode.yaml (the node's tailscaled at the chart's tailscaledHostPath).
echo "== container image (scripts/build-image.sh)" >&2
image_start=$SECONDS
image_out="$(scripts/build-image.sh)"
echo "$image_out"
image_ref="$(sed -n 2p <<<"$image_out")"
echo "== image built in $((SECONDS - image_start)) s; lab e2e in image mode (HEADCNI_LAB_IMAGE=$image_ref)" >&2
e2e_start=$SECONDS
HEADCNI_LAB_IMAGE="$image_ref" cargo test -p headcni-lab --test e2e --quiet -- --test-threads=4 2>&1 |
    tee -a "$test_log"
echo "== image-mode e2e in $((SECONDS - e2e_start)) s" >&2
# The total over every test binary (cargo's last line is often a doc-test run of 0 tests).
totals="$(awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed", p, f}' "$test_log")"

# The Helm chart: lint and render with the real Helm engine, validate every rendering strictly,
# and prove deploy/headcni.yaml is its rendering (installs its pinned Python venv itself).
echo "== Helm chart (scripts/check-chart.sh)" >&2
scripts/check-chart.sh

echo "== fuzzing (${FUZZ_SECONDS}s per target)" >&2
fuzz_toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz_toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
(
    cd fuzz
    for target in $(cargo "${fuzz_toolchain[@]}" fuzz list); do
        echo "-- fuzz $target" >&2
        cargo "${fuzz_toolchain[@]}" fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -n 3
    done
)
echo "== all tests passed" >&2
echo "$totals"
