//! Image mode in daemon mode: the node's "tailscale package". The daemon-mode DaemonSet
//! (`deploy/headcni-daemon-mode.yaml`) mounts the node's tailscaled binary from a `hostPath`
//! of `type: File` (`daemonMode.tailscaledHostPath`, `/usr/local/sbin/tailscaled`); on a lab
//! node that file is the `tailscaled-standin`, bind-mounted there in the node's mount
//! namespace only, as a node's tailscale package would install tailscaled.
//!
//! The one place the lab adds to the manifest: real tailscaled is one static Go binary with
//! WireGuard built in, the stand-in is a (glibc, dynamically linked) Rust binary that runs
//! `wireguard-go`. So the daemon container also gets, read-only, `wireguard-go` at
//! `/usr/bin/wireguard-go` (on the image's `PATH`) and every shared library the two need that
//! is not glibc's core (`libc.so.6` and the loader, which the image carries for `nft`), at its
//! canonical path (e.g. `libgcc_s.so.1`), plus the node's own `/run/wireguard` at both
//! `/run/wireguard` (where the stand-in looks for wireguard-go's UAPI socket) and
//! `/var/run/wireguard` (where wireguard-go makes it): the image's root is read-only and has
//! no `/var/run` → `/run` symlink.
//! Those are the stand-in's runtime, not HeadCNI's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::manifest::DaemonSetPod;

/// Where the stand-in's `wireguard-go` goes in the daemon container (the image's `PATH` is
/// `/usr/local/bin:/usr/sbin:/usr/bin`).
pub const WIREGUARD_GO_IN_CONTAINER: &str = "/usr/bin/wireguard-go";

/// wireguard-go's UAPI socket directory (wireguard-go `ipc/uapi_unix.go`, `socketDirectory`).
pub const WIREGUARD_RUN_DIR: &str = "/var/run/wireguard";

/// The node's own directory behind it (in the node's private `/run`), where the stand-in
/// reads the UAPI socket (`tailscaled_standin.rs`).
pub const NODE_WIREGUARD_DIR: &str = "/run/wireguard";

/// Upper bound on `ldd`'s output read (a few dozen lines for these binaries).
const MAX_LDD_BYTES: usize = 64 << 10;

/// glibc's core, which the image holds (its `nft` links them) and which must match each other:
/// never mounted from the host.
const IMAGE_LIBS: &[&str] = &["libc.so.6", "ld-linux-x86-64.so.2", "linux-vdso.so.1"];

/// The files the lab provides at the manifest's `hostPath` files: (path on the node, file on
/// this machine). The daemon-mode manifest's one file is `[tailscale] tailscaled_path`
/// (mounted at the same path in the container): the stand-in goes there.
///
/// Errors: the manifest mounts a `hostPath` file that is not the configured tailscaled.
pub fn host_files(
    pod: &DaemonSetPod,
    tailscaled_path: Option<&str>,
    standin: &Path,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for (host, mount) in pod.host_files() {
        if Some(mount.path.as_str()) != tailscaled_path {
            bail!(
                "the manifest mounts hostPath file {host} at {}, which is not [tailscale] \
                 tailscaled_path ({tailscaled_path:?}): the lab provides no such file",
                mount.path
            );
        }
        out.push((PathBuf::from(host), standin.to_path_buf()));
    }
    Ok(out)
}

/// The stand-in's runtime for the daemon container as `podman run` arguments: every file of
/// [`runtime_mounts`] read-only, and the node's [`NODE_WIREGUARD_DIR`] at itself and at
/// [`WIREGUARD_RUN_DIR`]. `wireguard_go` is the
/// machine's `wireguard-go`.
///
/// Errors: `ldd` cannot run or fails on one of the binaries.
pub fn runtime_args(standin: &Path, wireguard_go: &Path) -> Result<Vec<String>> {
    let mut args: Vec<String> = runtime_mounts(standin, wireguard_go)?
        .into_iter()
        .map(|(src, dst)| format!("--volume={}:{}:ro", src.display(), dst.display()))
        .collect();
    for dst in [NODE_WIREGUARD_DIR, WIREGUARD_RUN_DIR] {
        args.push(format!("--volume={NODE_WIREGUARD_DIR}:{dst}"));
    }
    Ok(args)
}

/// The files of [`runtime_args`]: (file on this machine, path in the container).
///
/// Errors: `ldd` cannot run or fails on one of the binaries.
pub fn runtime_mounts(standin: &Path, wireguard_go: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = vec![(
        wireguard_go.to_path_buf(),
        PathBuf::from(WIREGUARD_GO_IN_CONTAINER),
    )];
    for bin in [standin, wireguard_go] {
        for lib in needed_libs(bin)? {
            let canonical = std::fs::canonicalize(&lib)
                .with_context(|| format!("{}: library {}", bin.display(), lib.display()))?;
            // The container path keeps the library's name (its soname) in the canonical
            // directory: `libgcc_s.so.1` may be a symlink to a versioned file.
            let dir = canonical.parent().unwrap_or(Path::new("/"));
            let dst = dir.join(lib.file_name().unwrap_or_default());
            if !out.iter().any(|(_, d)| d == &dst) {
                out.push((canonical, dst));
            }
        }
    }
    Ok(out)
}

/// The shared libraries `bin` needs beyond [`IMAGE_LIBS`], per `ldd` (`name => /path (addr)`
/// lines). A statically linked binary needs none.
fn needed_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_LDD_BYTES)]);
    if !out.status.success() {
        // glibc's ldd on a static executable: "not a dynamic executable", exit 1.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("statically linked") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", bin.display(), err.trim());
    }
    Ok(parse_ldd(&text))
}

/// `ldd` output → the resolved paths of the libraries not in [`IMAGE_LIBS`].
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            let path = rest.split_whitespace().next()?;
            (path.starts_with('/') && !IMAGE_LIBS.contains(&name)).then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_the_libraries_beyond_glibcs_core() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f5d)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f5e)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f60)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6")
            ]
        );
    }

    #[test]
    fn the_standin_goes_at_the_configured_tailscaled_path_and_nothing_else_is_provided() {
        let pod = super::super::manifest::parse(super::super::manifest::DAEMON_MODE_MANIFEST)
            .expect("daemon-mode manifest");
        let standin = Path::new("/opt/lab/tailscaled-standin");
        assert_eq!(
            host_files(&pod, Some("/usr/local/sbin/tailscaled"), standin).unwrap(),
            [(
                PathBuf::from("/usr/local/sbin/tailscaled"),
                standin.to_path_buf()
            )]
        );
        assert!(host_files(&pod, Some("/usr/sbin/tailscaled"), standin).is_err());
        assert!(host_files(&pod, None, standin).is_err());
    }
}
