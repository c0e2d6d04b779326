#!/usr/bin/env bash
# The README's first command on a fresh machine, reproduced on this one: a minimal Debian
# bookworm root (`debootstrap --variant=minbase`: no package beyond the base system, no CA
# bundle, no iproute2/nftables/iptables/wireguard) becomes `/` of a private mount namespace
# (pivot_root, so the lab's node mount namespaces see it as the real root), the release
# binaries are copied in, and `headcni lab up` runs there: it must install its Debian
# packages itself and bring up the 2-node lab; then `lab down`. Prints the wall time.
#
#   cargo build --release --workspace && scripts/fresh-machine-check.sh
#
# Needs root, debootstrap (apt-get install debootstrap) and network access to the Debian
# mirror. The Rust toolchain is not in the root: the binaries are built outside it.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "fresh-machine-check.sh: run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "fresh-machine-check.sh: apt-get install debootstrap" >&2; exit 1; }
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
for b in headcni headcni-daemon headcni-lab headscale-standin tailscaled-standin; do
    [[ -x "$bin/$b" ]] || { echo "fresh-machine-check.sh: $bin/$b missing: cargo build --release --workspace" >&2; exit 1; }
done
work="$(mktemp -d /var/tmp/headcni-fresh.XXXXXX)"
trap 'rm -rf --one-file-system "$work"' EXIT
root="$work/root"
echo "== debootstrap --variant=minbase bookworm ($root)" >&2
debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$root/opt/headcni"
cp "$bin"/{headcni,headcni-daemon,headcni-lab,headscale-standin,tailscaled-standin} "$root/opt/headcni/"
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "== headcni lab up in the fresh root" >&2
start=$SECONDS
ROOT="$root" unshare -m --propagation private sh -c '
    mount --bind "$ROOT" "$ROOT" && mount -t proc proc "$ROOT/proc" &&
    mount --rbind /dev "$ROOT/dev" && mount --rbind /sys "$ROOT/sys" && mount -t tmpfs tmpfs "$ROOT/run" &&
    cd "$ROOT" && mkdir -p old && pivot_root . old && cd / && umount -l /old &&
    /opt/headcni/headcni lab up --name fresh; rc=$?; /opt/headcni/headcni lab down --name fresh; exit $rc'
echo "== the first command took $((SECONDS - start)) s on the fresh root (apt-get included)" >&2
