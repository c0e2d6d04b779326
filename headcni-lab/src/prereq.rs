//! What `headcni lab up` needs from the machine, checked before anything is built.
//!
//! A fresh Debian machine with only the Rust toolchain lacks the lab's tools; without this
//! check the lab would start, wait for a tailscaled stand-in that can never bring up
//! `tailscale0` (no `wireguard-go`) and fail after a timeout. Instead [`probe`] looks at the
//! machine (well under a second: file lookups and one `unshare` on a short-lived thread),
//! [`decide`] turns what it found into either "ready", "install these Debian packages" or one
//! actionable line, and [`apt_install`] installs the packages with `apt-get`, its progress on
//! stderr.
//!
//! [`decide`] is pure (no I/O), so every combination is tested without uninstalling
//! anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `PATH` every lab process (stand-ins, daemons, the plugin chain) runs with, and where
/// [`probe`] looks for the tools.
pub const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where Debian's `containernetworking-plugins` installs the reference CNI plugins (the lab
/// appends it to `CNI_PATH`, see `cluster::chain::cni_path`).
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The character device of the TUN driver that `wireguard-go` opens for `tailscale0`.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// A program the lab (or a process it starts) executes, and the Debian bookworm package that
/// ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Executable name, looked up in [`NODE_PATH`].
    pub binary: &'static str,
    /// The Debian package that installs it.
    pub package: &'static str,
}

/// Every tool the lab needs, in install order.
///
/// - `wireguard-go` (package `wireguard-go`): the tailscaled stand-in's `tailscale0` (the
///   kernel may have no WireGuard module).
/// - `wg` (`wireguard-tools`): inspecting the nodes' WireGuard (`lab exec node-1 -- wg`).
/// - `nft` (`nftables`): the daemon's `inet headcni` masquerade table and its check for
///   foreign forward drops.
/// - `ip` (`iproute2`): `lab exec` and the end-to-end checks.
/// - `iptables` (`iptables`): the daemon's FORWARD accept rules and the chained `portmap`.
pub const TOOLS: &[Tool] = &[
    Tool {
        binary: "wireguard-go",
        package: "wireguard-go",
    },
    Tool {
        binary: "wg",
        package: "wireguard-tools",
    },
    Tool {
        binary: "nft",
        package: "nftables",
    },
    Tool {
        binary: "ip",
        package: "iproute2",
    },
    Tool {
        binary: "iptables",
        package: "iptables",
    },
];

/// The Debian package of the reference CNI plugins (`portmap`, `bandwidth`, ...) in
/// [`DEBIAN_CNI_DIR`].
pub const CNI_PLUGINS_PACKAGE: &str = "containernetworking-plugins";

/// What [`probe`] found on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// The effective user is root.
    pub root: bool,
    /// [`TUN_DEVICE`] exists and is a character device.
    pub tun: bool,
    /// `unshare(CLONE_NEWNET)` failed with this error (`None`: network namespaces work).
    pub netns_error: Option<String>,
    /// Which of [`TOOLS`]' binaries are executable files in [`NODE_PATH`].
    pub binaries: BTreeSet<String>,
    /// Which CNI plugins (by `type`) are executable files in [`DEBIAN_CNI_DIR`].
    pub cni_plugins: BTreeSet<String>,
    /// `apt-get` is in [`NODE_PATH`] (a Debian-like machine that can install packages).
    pub apt_get: bool,
}

/// What to do before building the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything is there.
    Ready,
    /// These Debian packages are missing (sorted, deduplicated); installing them makes the
    /// machine ready.
    Install(Vec<&'static str>),
    /// The lab cannot run here; the one-line message says why and what to do.
    Fail(String),
}

/// Decides from `probe` whether the lab can be built. `chained` are the CNI plugin types the
/// lab's conflist chains after `headcni` (the lab chains `portmap`); each must be in
/// [`DEBIAN_CNI_DIR`].
///
/// Order of precedence: not root, then no TUN device, then no network namespaces (none of
/// which a package fixes), then missing packages: [`Verdict::Install`] when `apt-get` is
/// there, else a [`Verdict::Fail`] naming the packages.
pub fn decide(probe: &Probe, chained: &[&str]) -> Verdict {
    if !probe.root {
        return Verdict::Fail(
            "the lab creates network and mount namespaces: run it as root (sudo headcni lab up)"
                .to_owned(),
        );
    }
    if !probe.tun {
        return Verdict::Fail(format!(
            "{TUN_DEVICE} is missing, so wireguard-go cannot create tailscale0: `modprobe tun` \
             (in a container: run it with --device {TUN_DEVICE})"
        ));
    }
    if let Some(e) = &probe.netns_error {
        return Verdict::Fail(format!(
            "network namespaces are not available here (unshare(CLONE_NEWNET): {e}): run the \
             lab on a host or in a privileged container"
        ));
    }
    let mut packages: BTreeSet<&'static str> = TOOLS
        .iter()
        .filter(|t| !probe.binaries.contains(t.binary))
        .map(|t| t.package)
        .collect();
    if chained.iter().any(|c| !probe.cni_plugins.contains(*c)) {
        packages.insert(CNI_PLUGINS_PACKAGE);
    }
    if packages.is_empty() {
        return Verdict::Ready;
    }
    let packages: Vec<&'static str> = packages.into_iter().collect();
    if probe.apt_get {
        Verdict::Install(packages)
    } else {
        Verdict::Fail(format!(
            "missing tools and no apt-get to install them: install the Debian packages {} \
             (or their equivalents) and run it again",
            packages.join(" ")
        ))
    }
}

/// The missing binaries and CNI plugins of `probe`, for messages (`wireguard-go, nft,
/// /usr/lib/cni/portmap`).
pub fn missing(probe: &Probe, chained: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = TOOLS
        .iter()
        .filter(|t| !probe.binaries.contains(t.binary))
        .map(|t| t.binary.to_owned())
        .collect();
    out.extend(
        chained
            .iter()
            .filter(|c| !probe.cni_plugins.contains(**c))
            .map(|c| format!("{DEBIAN_CNI_DIR}/{c}")),
    );
    out
}

/// An executable regular file `name` in one of `path`'s directories.
pub fn find_in_path(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `unshare(CLONE_NEWNET)` on a fresh thread (which then exits, dropping the namespace): the
/// capability the lab needs, tested without touching this process's namespaces.
fn netns_error() -> Option<String> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .err()
            .map(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Some("the probe thread panicked".to_owned()))
}

/// Looks at this machine: root, [`TUN_DEVICE`], network namespaces, [`TOOLS`] in
/// [`NODE_PATH`], `chained` CNI plugins in [`DEBIAN_CNI_DIR`], `apt-get`. Only file lookups
/// and one `unshare` on a short-lived thread (the namespace check is skipped when not root:
/// it would fail for that reason alone).
pub fn probe(chained: &[&str]) -> Probe {
    use std::os::unix::fs::FileTypeExt;
    let root = nix::unistd::geteuid().is_root();
    Probe {
        root,
        tun: std::fs::metadata(TUN_DEVICE).is_ok_and(|m| m.file_type().is_char_device()),
        netns_error: if root { netns_error() } else { None },
        binaries: TOOLS
            .iter()
            .filter(|t| find_in_path(NODE_PATH, t.binary).is_some())
            .map(|t| t.binary.to_owned())
            .collect(),
        cni_plugins: chained
            .iter()
            .filter(|c| is_executable(&Path::new(DEBIAN_CNI_DIR).join(c)))
            .map(|c| (*c).to_owned())
            .collect(),
        apt_get: find_in_path(NODE_PATH, "apt-get").is_some(),
    }
}

/// Why [`apt_install`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `apt-get` could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// `apt-get` exited unsuccessfully.
    #[error("`{command}` failed ({status}); its output is above")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// The two `apt-get` invocations that install `packages`: `update` (a fresh machine has no
/// package lists) and `install -y --no-install-recommends`, both quiet (`-q`).
pub fn apt_commands(packages: &[&str]) -> [Vec<String>; 2] {
    let update = vec!["-q".to_owned(), "update".to_owned()];
    let mut install: Vec<String> = ["-q", "install", "-y", "--no-install-recommends"]
        .map(String::from)
        .to_vec();
    install.extend(packages.iter().map(|p| (*p).to_owned()));
    [update, install]
}

/// Installs `packages` with `apt_get` (the program; `"apt-get"` in the lab, a stand-in in
/// tests), non-interactively (`DEBIAN_FRONTEND=noninteractive`), reporting each step through
/// `progress`. apt's own output goes to this process's stderr (stdout stays the lab's
/// report). Blocks until apt finishes (apt bounds its own downloads).
///
/// Errors: [`InstallError`] when a step cannot start or fails.
pub fn apt_install(
    apt_get: &Path,
    packages: &[&str],
    progress: &mut dyn FnMut(String),
) -> Result<(), InstallError> {
    let [update, install] = apt_commands(packages);
    for (what, args) in [
        ("updating the package lists".to_owned(), update),
        (format!("installing {}", packages.join(" ")), install),
    ] {
        progress(format!("{what} (apt-get {})", args.join(" ")));
        let status = Command::new(apt_get)
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", NODE_PATH)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .map_err(|source| InstallError::Spawn {
                program: apt_get.display().to_string(),
                source,
            })?;
        if !status.success() {
            return Err(InstallError::Failed {
                command: format!("{} {}", apt_get.display(), args.join(" ")),
                status,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Probe {
        Probe {
            root: true,
            tun: true,
            netns_error: None,
            binaries: TOOLS.iter().map(|t| t.binary.to_owned()).collect(),
            cni_plugins: ["portmap".to_owned()].into(),
            apt_get: true,
        }
    }

    #[test]
    fn a_complete_machine_is_ready() {
        assert_eq!(decide(&ready(), &["portmap"]), Verdict::Ready);
        assert!(missing(&ready(), &["portmap"]).is_empty());
    }

    #[test]
    fn a_fresh_debian_machine_gets_every_package_once() {
        let fresh = Probe {
            binaries: ["ip".to_owned()].into(), // iproute2 is in Debian's base
            cni_plugins: BTreeSet::new(),
            ..ready()
        };
        assert_eq!(
            decide(&fresh, &["portmap"]),
            Verdict::Install(vec![
                "containernetworking-plugins",
                "iptables",
                "nftables",
                "wireguard-go",
                "wireguard-tools",
            ])
        );
        assert_eq!(
            missing(&fresh, &["portmap"]),
            [
                "wireguard-go",
                "wg",
                "nft",
                "iptables",
                "/usr/lib/cni/portmap"
            ]
        );
    }

    #[test]
    fn each_missing_binary_maps_to_its_package() {
        for tool in TOOLS {
            let mut p = ready();
            p.binaries.remove(tool.binary);
            assert_eq!(
                decide(&p, &["portmap"]),
                Verdict::Install(vec![tool.package]),
                "{}",
                tool.binary
            );
        }
    }

    #[test]
    fn cni_plugins_are_needed_only_when_chained() {
        let p = Probe {
            cni_plugins: BTreeSet::new(),
            ..ready()
        };
        assert_eq!(decide(&p, &[]), Verdict::Ready);
        assert_eq!(
            decide(&p, &["portmap"]),
            Verdict::Install(vec!["containernetworking-plugins"])
        );
        let with_portmap = ready();
        assert_eq!(
            decide(&with_portmap, &["portmap", "bandwidth"]),
            Verdict::Install(vec!["containernetworking-plugins"])
        );
    }

    fn fail_line(v: Verdict) -> String {
        match v {
            Verdict::Fail(m) => {
                assert!(!m.contains('\n'), "one line: {m}");
                m
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn what_no_package_fixes_is_one_actionable_line() {
        let not_root = Probe {
            root: false,
            binaries: BTreeSet::new(),
            ..ready()
        };
        assert!(fail_line(decide(&not_root, &["portmap"])).contains("run it as root"));
        let no_tun = Probe {
            tun: false,
            ..ready()
        };
        let m = fail_line(decide(&no_tun, &["portmap"]));
        assert!(
            m.contains("/dev/net/tun") && m.contains("modprobe tun"),
            "{m}"
        );
        let no_netns = Probe {
            netns_error: Some("EPERM: Operation not permitted".into()),
            ..ready()
        };
        let m = fail_line(decide(&no_netns, &["portmap"]));
        assert!(m.contains("EPERM") && m.contains("privileged"), "{m}");
    }

    #[test]
    fn without_apt_get_the_packages_are_named() {
        let p = Probe {
            apt_get: false,
            binaries: ["wg".to_owned(), "ip".to_owned(), "iptables".to_owned()].into(),
            ..ready()
        };
        let m = fail_line(decide(&p, &["portmap"]));
        assert!(m.contains("packages nftables wireguard-go "), "{m}");
        assert!(!m.contains(" iptables"), "only what is missing: {m}");
    }

    #[test]
    fn apt_commands_update_then_install_without_recommends() {
        let [u, i] = apt_commands(&["nftables", "wireguard-go"]);
        assert_eq!(u, ["-q", "update"]);
        assert_eq!(
            i,
            [
                "-q",
                "install",
                "-y",
                "--no-install-recommends",
                "nftables",
                "wireguard-go"
            ]
        );
    }

    /// An `apt-get` stand-in: a script that appends its arguments and DEBIAN_FRONTEND to a
    /// file and exits with `code` on `install`.
    fn fake_apt(dir: &Path, code: i32) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("calls");
        let script = dir.join("apt-get");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = probe ] && exit 0\n\
                 echo \"$DEBIAN_FRONTEND $*\" >> {}\necho progress-line\n\
                 case \"$*\" in *install*) exit {code};; esac\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread's fork may still hold the just-written file open for a moment
        // (ETXTBSY on exec): run it until it starts.
        for _ in 0..200 {
            match std::process::Command::new(&script).arg("probe").status() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        (script, log)
    }

    #[test]
    fn apt_install_runs_update_then_install_and_reports_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let (apt, log) = fake_apt(tmp.path(), 0);
        let mut said = Vec::new();
        apt_install(&apt, &["nftables"], &mut |m| said.push(m)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "noninteractive -q update\n\
             noninteractive -q install -y --no-install-recommends nftables\n"
        );
        assert_eq!(said.len(), 2);
        assert!(said[1].contains("installing nftables"), "{said:?}");
    }

    #[test]
    fn a_failing_apt_get_is_an_error_naming_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let (apt, _) = fake_apt(tmp.path(), 100);
        let e = apt_install(&apt, &["wireguard-go"], &mut |_| {}).unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(e, InstallError::Failed { .. }) && m.contains("install"),
            "{m}"
        );
        let e = apt_install(&tmp.path().join("none"), &["x"], &mut |_| {}).unwrap_err();
        assert!(matches!(e, InstallError::Spawn { .. }), "{e}");
    }

    #[test]
    fn find_in_path_wants_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("plain"), b"x").unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        std::fs::write(d.join("tool"), b"x").unwrap();
        std::fs::set_permissions(d.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent::{}", d.display());
        assert_eq!(find_in_path(&path, "tool"), Some(d.join("tool")));
        assert_eq!(find_in_path(&path, "plain"), None);
        assert_eq!(find_in_path(&path, "dir"), None);
        assert_eq!(find_in_path(&path, "absent"), None);
    }

    #[test]
    fn this_machine_probes_as_root_with_namespaces() {
        // The test suite runs as root on a machine with namespaces (docs/lab.md).
        let p = probe(&["portmap"]);
        assert!(p.root);
        assert_eq!(p.netns_error, None);
        assert!(p.binaries.contains("ip"), "{p:?}");
    }
}
