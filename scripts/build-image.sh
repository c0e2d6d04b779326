#!/usr/bin/env bash
# Builds the HeadCNI container image offline, with podman, from no base image:
#
#   ./scripts/build-image.sh        # → localhost/headcni:<version> and :<version>-<git rev>
#
# What the image holds (FROM scratch, a rootfs assembled here):
#   /usr/local/bin/headcni, /usr/local/bin/headcni-daemon
#       static musl binaries (x86_64-unknown-linux-musl; no libc in the image for them).
#       Where that rustup target is not installed and cannot be added (no network to the
#       Rust distribution server, as on a CI machine), the glibc release binaries instead,
#       with exactly the shared libraries ldd lists for them (the script says so).
#       HEADCNI_IMAGE_LIBC=glibc forces that path, =musl forbids it.
#   /usr/sbin/nft, /usr/sbin/{ip,ip6}tables{,-legacy,-nft}{,-save,-restore}
#       the daemon runs nft (its `inet headcni` table, the foreign-drop check) and iptables
#       (FORWARD accept rules, whichever backend the host uses). These are copied from this
#       machine's Debian packages (nftables, iptables: found with `dpkg -L`) with exactly the
#       shared libraries `ldd` reports, the dynamic loader and the xtables extensions
#       iptables dlopens. Static builds of nft/iptables are not packaged by Debian, so the
#       rootfs carries their glibc instead of a rebuild of them.
#   /etc/ssl/certs/ca-certificates.crt
#       the CA bundle the Headscale and Kubernetes clients (rustls) verify against.
# Nothing else: no shell, no package manager. A daemon-mode tailscaled is not in it (it runs
# the host's, see docs/operations.md).
#
# Prints the image's tags and its digest. Needs root (podman), the Debian packages podman,
# nftables and iptables, and rustup's x86_64-unknown-linux-musl target (added when missing:
# the one step that needs the network; without it the glibc fallback above is used).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
rev="$(git rev-parse --short=12 HEAD)"
if ! git diff --quiet HEAD -- 2>/dev/null; then
    rev="$rev-dirty"
fi
image="${HEADCNI_IMAGE:-headcni}"

die() {
    echo "build-image.sh: $*" >&2
    exit 1
}
command -v podman >/dev/null || die "podman is missing: apt-get install podman"
for tool in nft iptables-nft iptables-legacy; do
    [[ -x /usr/sbin/$tool ]] || die "/usr/sbin/$tool is missing: apt-get install nftables iptables"
done
libc="${HEADCNI_IMAGE_LIBC:-auto}"
case "$libc" in
auto | musl | glibc) ;;
*) die "HEADCNI_IMAGE_LIBC=$libc: auto, musl or glibc" ;;
esac
if [[ $libc != glibc ]] && ! rustup target list --installed | grep -qx "$target"; then
    echo "== rustup target add $target" >&2
    if ! rustup target add "$target" >&2; then
        [[ $libc == musl ]] && die "rustup target add $target failed (HEADCNI_IMAGE_LIBC=musl)"
        echo "== $target cannot be added (no network to the Rust distribution server?):" \
            "falling back to the glibc release binaries plus exactly their shared libraries" >&2
        libc=glibc
    fi
fi
[[ $libc == glibc ]] || libc=musl

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if [[ $libc == musl ]]; then
    echo "== cargo build --release --target $target (headcni, headcni-daemon)" >&2
    # ring's C parts: Debian has no x86_64-linux-musl-gcc unless musl-tools is installed; the
    # host gcc compiles them (they use no glibc-only headers) and rustc links with its own musl.
    CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-cc}" \
        cargo build --release --locked -p headcni-cli --target "$target" --quiet
    bin_dir="$target_dir/$target/release"
    for b in headcni headcni-daemon; do
        # glibc's ldd on a static(-pie) executable: "statically linked" or "not a dynamic executable".
        ldd "$bin_dir/$b" 2>&1 | grep -Eq 'statically linked|not a dynamic executable' ||
            die "$bin_dir/$b is not statically linked"
    done
else
    echo "== cargo build --release (headcni, headcni-daemon; glibc, dynamically linked)" >&2
    cargo build --release --locked -p headcni-cli --quiet
    bin_dir="$target_dir/release"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
# Merged /usr, as Debian bookworm: /lib64/ld-linux-x86-64.so.2 (the loader's path in every
# dynamic binary) resolves through lib64 -> usr/lib64.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64,local/bin} "$root"/etc/ssl/certs "$root"/tmp \
    "$root"/run "$root"/var/lib
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"

install -m 0755 "$bin_dir/headcni" "$bin_dir/headcni-daemon" "$root/usr/local/bin/"

# A host file into the rootfs at its canonical (merged-/usr) path, content dereferenced.
copy_host() {
    local src="$1" dest
    dest="$(realpath "$(dirname "$src")")/$(basename "$src")"
    [[ -e "$root$dest" ]] && return 0
    mkdir -p "$root$(dirname "$dest")"
    cp -L --preserve=mode "$src" "$root$dest"
}
# Every shared library (and the loader) an ELF file needs, per ldd.
copy_libs() {
    local lib
    for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        copy_host "$lib"
    done
}

# The glibc fallback: exactly the libraries (and loader) the two binaries need.
if [[ $libc == glibc ]]; then
    copy_libs "$bin_dir/headcni"
    copy_libs "$bin_dir/headcni-daemon"
fi

# nft and the iptables multi-call binaries, each command name a symlink as on the host
# (xtables-*-multi dispatch on their invocation name). The plain iptables names follow the
# host's update-alternatives choice.
copy_host /usr/sbin/nft
copy_libs /usr/sbin/nft
for name in {ip,ip6}tables{,-legacy,-nft}{,-save,-restore}; do
    real="$(readlink -f "/usr/sbin/$name")" || die "/usr/sbin/$name is missing"
    copy_host "$real"
    copy_libs "$real"
    [[ "$(basename "$real")" == "$name" ]] || ln -sf "$(basename "$real")" "$root/usr/sbin/$name"
done
# The extensions (libxt_*.so, ...) iptables dlopens, from the package that ships them.
iptables_files="$(dpkg -L iptables)"
xtables_dir="$(grep -m1 '/xtables$' <<<"$iptables_files")" || die "iptables' xtables dir not found (dpkg -L iptables)"
mkdir -p "$root$(realpath "$xtables_dir")"
for so in "$xtables_dir"/*.so; do
    copy_host "$so"
    copy_libs "$so"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" ||
    die "/etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates"

created="$(git log -1 --format=%cI HEAD)"
cat >"$work/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin
LABEL org.opencontainers.image.title="headcni" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$rev" \\
      org.opencontainers.image.created="$created" \\
      org.opencontainers.image.description="HeadCNI: the CNI plugin (headcni) and the node daemon (headcni-daemon)"
ENTRYPOINT ["/usr/local/bin/headcni"]
EOF

echo "== podman build (FROM scratch, no registry)" >&2
# --pull=never: nothing is fetched; --timestamp: the layer and config times are the commit's,
# so the same tree gives the same image.
podman build --quiet --pull=never --network=none \
    --timestamp "$(git log -1 --format=%ct HEAD)" \
    -t "$image:$version" -t "$image:$version-$rev" \
    -f "$work/Containerfile" "$work" >/dev/null
# Smoke check: every program in the image starts (its libraries and loader are there).
# Explicit, lowered rlimits: podman's default nofile (1048576) exceeds what some hosts let
# root set.
for cmd in "headcni --version" "headcni-daemon --version" "nft --version" \
    "iptables-nft --version" "iptables-legacy --version" "ip6tables-nft-restore --version"; do
    # shellcheck disable=SC2086 # $cmd is a command line
    podman run --rm --network=none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
        --entrypoint= "$image:$version-$rev" $cmd >/dev/null 2>&1 ||
        die "the image cannot run \`$cmd\`"
done
digest="$(podman image inspect --format '{{.Digest}}' "$image:$version-$rev")"
id="$(podman image inspect --format '{{.Id}}' "$image:$version-$rev")"
size="$(podman image inspect --format '{{.Size}}' "$image:$version-$rev")"
echo "== headcni and headcni-daemon in the image: $libc binaries" >&2
echo "localhost/$image:$version"
echo "localhost/$image:$version-$rev"
echo "digest $digest"
echo "id     $id ($((size / 1024 / 1024)) MiB)"
