//! Shared harness of the real-runtime tests (`runtime_podman.rs`, `runtime_containerd.rs`).
//!
//! A [`Node`] is what a Kubernetes node is to HeadCNI, built from namespaces the test owns:
//! - a test-unique **network** namespace `hct-rt<tag>-<pid>-node` (bridge `headcni0`, the host
//!   veths, portmap's iptables rules, the bandwidth plugin's qdiscs and ifb devices all live
//!   there), with a "node address" on a veth pair inside it ([`NODE_IP`]);
//! - a private **mount** namespace held by a `sleep` process (the *holder*), with a tmpfs on
//!   `/run` (runtime state, `/run/netns/*` of the pods, runc state, shim sockets) and a temp
//!   directory bind-mounted on `/var/lib` (libcni's `/var/lib/cni` cache, podman's
//!   `/var/lib/containers/cache`); every runtime command runs there through
//!   `nsenter -t <holder> -m -n`;
//! - a temp directory holding the CNI `bin/` (a recording wrapper `headcni` that execs the
//!   plugin under test, the `headcni-ipam` symlink, and the reference `portmap`, `bandwidth`
//!   and `loopback`), `net.d/` with the conflist **rendered and written by the daemon's own code**
//!   (`headcni_node::cniconf::ensure`, portmap and bandwidth chained), the IPAM
//!   `data/`, and the runtimes' roots.
//!
//! Dropping the node (also on panic) force-deletes every runc container of both runtimes'
//! runc roots, SIGKILLs every process left in the private mount namespace (runtime daemons,
//! conmon, shims, the holder), removes the cgroup directory the tests used as cgroup parent,
//! then deletes the node netns and the temp directory. Nothing is changed outside these
//! namespaces except that cgroup directory, which is removed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use headcni_node::cniconf;
use headcni_node::config::Config;
use serde_json::{Value, json};

use crate::common::{EXE, Ns, REF_CNI_DIR, eventually, reservations_in};

/// The node's own address (on the `hcnode0` veth inside the node netns): what a hostPort is
/// published on, as a node's InternalIP would be.
pub const NODE_IP: &str = "198.51.100.10";
/// The busybox image: `httpd -f -p 80 -h /www` serving [`INDEX_BODY`].
pub const BUSYBOX_IMAGE: &str = "localhost/headcni-busybox:test";
/// The pause-like sandbox image: `sleep 2147483647`.
pub const PAUSE_IMAGE: &str = "localhost/headcni-pause:test";
/// The body of `/www/index.html` in the busybox image.
pub const INDEX_BODY: &str = "hello from headcni runtime test\n";
/// The network name in the conflist (and the IPAM store directory name).
pub const NETWORK: &str = "headcni";
/// The bridge (inside the node netns).
pub const BRIDGE: &str = "headcni0";

/// A test node: node netns + private mount namespace + temp directory (see the module docs).
pub struct Node {
    /// The test tag (unique among the runtime tests).
    pub tag: String,
    /// The PodCIDR, `10.124.<octet>.0/24`.
    pub cidr: String,
    /// Third octet of the PodCIDR.
    pub octet: u8,
    /// Temp directory (bin/, net.d/, data/, var-lib/, runtime roots).
    pub tmp: tempfile::TempDir,
    /// The cgroup parent the tests give containers (`/headcni-rt-<tag>-<pid>`), removed on drop.
    pub cgroup_parent: String,
    holder: Child,
    holder_mnt: String,
    /// The node network namespace (dropped, i.e. deleted, after [`Drop::drop`] ran).
    pub ns: Ns,
}

impl Node {
    /// Creates the node: netns, node address, holder with private `/run` and `/var/lib`,
    /// CNI bin dir, and the daemon-rendered conflist for `10.124.<octet>.0/24`.
    pub fn new(tag: &str, octet: u8) -> Node {
        let ns = Ns::new(&format!("rt{tag}"), "node");
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&[
            "ip", "link", "add", "hcnode0", "type", "veth", "peer", "name", "hcnode1",
        ]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "hcnode0",
        ]);
        ns.exec_ok(&["ip", "link", "set", "hcnode0", "up"]);
        ns.exec_ok(&["ip", "link", "set", "hcnode1", "up"]);

        let tmp = tempfile::Builder::new()
            .prefix(&format!("hct-rt{tag}-"))
            .tempdir()
            .expect("tempdir");
        for d in ["bin", "net.d", "data", "var-lib/cni", "calls", "logs"] {
            std::fs::create_dir_all(tmp.path().join(d)).expect("mkdir");
        }
        let (holder, holder_mnt) = spawn_holder(&ns, &tmp.path().join("var-lib"));
        let node = Node {
            tag: tag.to_owned(),
            cidr: format!("10.124.{octet}.0/24"),
            octet,
            cgroup_parent: format!("/headcni-rt-{tag}-{}", std::process::id()),
            tmp,
            holder,
            holder_mnt,
            ns,
        };
        node.install_plugins();
        node.write_conflist();
        node
    }

    /// A path inside the temp directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The CNI bin directory.
    pub fn bin_dir(&self) -> PathBuf {
        self.path("bin")
    }

    /// The CNI configuration directory.
    pub fn conf_dir(&self) -> PathBuf {
        self.path("net.d")
    }

    /// The IPAM store `<dataDir>/headcni`.
    pub fn store(&self) -> PathBuf {
        self.path("data").join(NETWORK)
    }

    /// The bridge gateway, `10.124.<octet>.1`.
    pub fn gateway(&self) -> String {
        format!("10.124.{}.1", self.octet)
    }

    /// Whether `ip` is inside the PodCIDR (and not its network, gateway or broadcast address).
    pub fn in_pod_cidr(&self, ip: &str) -> bool {
        ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| {
            let o = a.octets();
            o[..3] == [10, 124, self.octet] && o[3] > 1 && o[3] < 255
        })
    }

    /// The reservations of the IPAM store: IP → `<containerID>\r\n<ifname>`.
    pub fn reservations(&self) -> BTreeMap<String, String> {
        reservations_in(&self.store())
    }

    /// `bin/`: `headcni`, `portmap`, `bandwidth` are wrappers that record every call
    /// (environment and stdin, see [`Node::calls`]) and exec the real plugin (the plugin
    /// under test, Debian's reference ones); `headcni-ipam` → the plugin; `loopback` → the
    /// reference one (containerd's CRI sets up `lo` with it).
    fn install_plugins(&self) {
        let bin = self.bin_dir();
        let ref_plugin = |p: &str| {
            let src = Path::new(REF_CNI_DIR).join(p);
            assert!(
                src.is_file(),
                "{} is missing: install Debian's containernetworking-plugins",
                src.display()
            );
            src
        };
        for (name, target) in [
            ("headcni", PathBuf::from(EXE)),
            ("portmap", ref_plugin("portmap")),
            ("bandwidth", ref_plugin("bandwidth")),
        ] {
            let wrapper = format!(
                "#!/bin/sh\n\
                 # Records what the runtime sends (environment and stdin), then runs {name}.\n\
                 f={calls}/$(date +%s%N)-$$-{name}-\"$CNI_COMMAND\"\n\
                 cat > \"$f.stdin\"\n\
                 printf '%s\\n' \"CNI_COMMAND=$CNI_COMMAND\" \"CNI_CONTAINERID=$CNI_CONTAINERID\" \\\n\
                 \"CNI_NETNS=$CNI_NETNS\" \"CNI_IFNAME=$CNI_IFNAME\" \"CNI_ARGS=$CNI_ARGS\" \\\n\
                 \"PLUGIN={name}\" > \"$f.env\"\n\
                 exec {target} < \"$f.stdin\"\n",
                calls = self.path("calls").display(),
                target = target.display()
            );
            let w = bin.join(name);
            std::fs::write(&w, wrapper).expect("write a wrapper");
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::os::unix::fs::symlink(EXE, bin.join("headcni-ipam")).expect("symlink headcni-ipam");
        std::os::unix::fs::symlink(ref_plugin("loopback"), bin.join("loopback"))
            .expect("symlink loopback");
    }

    /// Renders and writes the conflist exactly as the daemon does (`cniconf::ensure`), with
    /// the node's PodCIDR, MTU 1280, the IPAM store in the temp dir, no daemon socket, and
    /// portmap + bandwidth chained.
    fn write_conflist(&self) {
        self.write_conflist_with_magic_dns(Default::default());
    }

    /// [`Node::write_conflist`] with the daemon's `[magic_dns]` set to `dns` (the conflist
    /// then carries `dns` when `dns.enable`).
    pub fn write_conflist_with_magic_dns(&self, dns: headcni_node::config::MagicDnsConfig) {
        let mut cfg = Config {
            magic_dns: dns,
            ..Config::default()
        };
        cfg.cni.conf_dir = self.conf_dir();
        cfg.cni.data_dir = self.path("data");
        cfg.cni.network_name = NETWORK.into();
        cfg.cni.bridge = BRIDGE.into();
        cfg.cni.daemon_socket = PathBuf::new();
        cfg.cni.chained = vec![
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        ];
        let cidr = self.cidr.parse().expect("PodCIDR");
        cniconf::ensure(&cfg, &[cidr], 1280).expect("write the conflist");
    }

    /// The conflist as written.
    pub fn conflist(&self) -> Value {
        let p = self.conf_dir().join(&Config::default().cni.conflist_name);
        serde_json::from_slice(&std::fs::read(&p).expect("read the conflist")).expect("JSON")
    }

    /// A command run inside the node netns and the private mount namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` in the node (see [`Node::cmd`]); panics with its output on failure.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .expect("spawn nsenter");
        assert_success(&out, &format!("{program} {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The recorded calls of plugin `plugin` with verb `command`.
    pub fn calls_of(&self, plugin: &str, command: &str) -> Vec<(BTreeMap<String, String>, Value)> {
        self.calls()
            .into_iter()
            .filter(|(e, _)| {
                e.get("PLUGIN").is_some_and(|p| p == plugin)
                    && e.get("CNI_COMMAND").is_some_and(|c| c == command)
            })
            .collect()
    }

    /// Every CNI call the wrappers recorded, in order: (environment, stdin JSON). The
    /// environment holds the five `CNI_*` variables the runtime set and `PLUGIN` (the type).
    pub fn calls(&self) -> Vec<(BTreeMap<String, String>, Value)> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.path("calls"))
            .expect("read calls/")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "env"))
            .collect();
        names.sort_by_key(|p| {
            let s = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let ns: u128 = s.split('-').next().unwrap_or("0").parse().unwrap_or(0);
            (ns, s)
        });
        names
            .into_iter()
            .map(|p| {
                let env = std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let stdin = std::fs::read(p.with_extension("stdin")).unwrap_or_default();
                (env, serde_json::from_slice(&stdin).unwrap_or(Value::Null))
            })
            .collect()
    }

    /// `GET /` to `addr` from inside the node netns; the body of a 200 answer.
    pub fn http_get(&self, addr: SocketAddr) -> std::io::Result<String> {
        match self.ns.run(|| headcni_testkit::http::get(addr, "/")) {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(std::io::Error::other(format!("bad response: {r:?}"))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// Polls [`Node::http_get`] until it returns [`INDEX_BODY`] (the server may still be
    /// starting) or `timeout` passes; panics with the last error.
    pub fn assert_serves(&self, addr: SocketAddr, timeout: Duration, what: &str) {
        let end = Instant::now() + timeout;
        loop {
            match self.http_get(addr) {
                Ok(body) if body == INDEX_BODY => return,
                r if Instant::now() > end => panic!("{what}: GET http://{addr}/ gave {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the node netns has the link `name`.
    pub fn has_link(&self, name: &str) -> bool {
        self.ns.link(name).is_some()
    }

    /// Waits until the node netns has no veth but the node's own `hcnode0`/`hcnode1`.
    pub fn assert_no_pod_veths(&self, what: &str) {
        let only_ours = || {
            self.ns
                .veths()
                .iter()
                .all(|v| v == "hcnode0" || v == "hcnode1")
        };
        assert!(
            eventually(Duration::from_secs(5), only_ours),
            "{what}: pod veths left in the node netns: {:?}",
            self.ns.veths()
        );
    }

    /// The node netns' nat table (`iptables-save -t nat`).
    pub fn nat_rules(&self) -> String {
        self.ns.exec_ok(&["iptables-save", "-t", "nat"])
    }

    fn kill_mount_ns_processes(&self) -> usize {
        let mut n = 0;
        for pid in pids_in_mount_ns(&self.holder_mnt) {
            // SAFETY: kill(2) on a pid that is in this test's private mount namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
        n
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // 1. Containers of both runtimes (runc state is on the private /run).
        for root in ["/run/runc", "/run/containerd/runc/k8s.io"] {
            let Ok(out) = self
                .cmd("runc")
                .args(["--root", root, "list", "-q"])
                .output()
            else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .cmd("runc")
                    .args(["--root", root, "delete", "--force", id])
                    .output();
            }
        }
        // 2. Every process left in the private mount namespace (the holder included).
        let _ = self.kill_mount_ns_processes();
        let _ = self.holder.wait();
        let gone = eventually(Duration::from_secs(5), || {
            self.kill_mount_ns_processes();
            pids_in_mount_ns(&self.holder_mnt).is_empty()
        });
        if !gone {
            eprintln!("cleanup: processes left in {}", self.holder_mnt);
        }
        // 3. The cgroup parent the containers used, in every hierarchy (children first).
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let dir = h.path().join(self.cgroup_parent.trim_start_matches('/'));
                if dir.is_dir() {
                    remove_cgroup_tree(&dir);
                }
            }
        }
        // 4. `ns` (the node netns) and `tmp` are dropped next, in field order.
    }
}

/// Removes a cgroup directory tree (rmdir only, deepest first).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = eventually(Duration::from_secs(2), || std::fs::remove_dir(dir).is_ok());
}

/// The pids whose mount namespace is `mnt` (`mnt:[<inode>]`).
fn pids_in_mount_ns(mnt: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|l| l.to_string_lossy() == mnt)
        })
        .collect()
}

/// Starts the holder: `unshare -m --propagation private` in the node netns, tmpfs on /run,
/// `var_lib` bound on /var/lib, then `sleep`. Returns it and its mount namespace link.
fn spawn_holder(ns: &Ns, var_lib: &Path) -> (Child, String) {
    const SCRIPT: &str = "set -e\n\
        mount -t tmpfs -o mode=0755 headcni-rt /run\n\
        mkdir -p /run/netns /run/lock\n\
        mount --bind \"$1\" /var/lib\n\
        echo ready\n\
        exec sleep 2147483647\n";
    let (mut cmd, node_file) = ns.command("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
        .arg(var_lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the mount-namespace holder");
    drop(node_file);
    let mut line = String::new();
    let stdout = child.stdout.take().expect("holder stdout");
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output();
        panic!("the mount-namespace holder failed: {out:?}");
    }
    let mnt = std::fs::read_link(format!("/proc/{}/ns/mnt", child.id()))
        .expect("holder mount ns")
        .to_string_lossy()
        .into_owned();
    let own = std::fs::read_link("/proc/self/ns/mnt").expect("own mount ns");
    assert_ne!(mnt, own.to_string_lossy(), "the holder shares our mount ns");
    (child, mnt)
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a docker-archive (`docker save` layout) holding [`BUSYBOX_IMAGE`] and
/// [`PAUSE_IMAGE`], both one layer made of the `busybox-static` package's `/bin/busybox`
/// and its applet links; no registry. Both `podman load` and `ctr images import` read it.
pub fn build_image_archive(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: install Debian's busybox-static"
    );
    let rootfs = dir.join("rootfs");
    for d in ["bin", "www", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "httpd", "nc", "cat", "ls", "ip", "wget"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
    }
    std::fs::write(rootfs.join("www/index.html"), INDEX_BODY).expect("index.html");
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");

    let arch = dir.join("archive");
    std::fs::create_dir_all(&arch).expect("mkdir archive");
    let layer = arch.join("layer.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&layer)
        .arg(".")
        .output()
        .expect("spawn tar");
    assert_success(&out, "tar the rootfs");
    let out = Command::new("sha256sum")
        .arg(&layer)
        .output()
        .expect("spawn sha256sum");
    assert_success(&out, "sha256sum");
    let digest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned();
    let config = |cmd: &[&str]| {
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
        })
    };
    std::fs::write(
        arch.join("busybox.json"),
        config(&["/bin/httpd", "-f", "-p", "80", "-h", "/www"]).to_string(),
    )
    .expect("write config");
    std::fs::write(
        arch.join("pause.json"),
        config(&["/bin/sleep", "2147483647"]).to_string(),
    )
    .expect("write config");
    let manifest = json!([
        {"Config": "busybox.json", "RepoTags": [BUSYBOX_IMAGE], "Layers": ["layer.tar"]},
        {"Config": "pause.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]},
    ]);
    std::fs::write(arch.join("manifest.json"), manifest.to_string()).expect("manifest");
    let tarball = dir.join("images.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&arch)
        .arg("-cf")
        .arg(&tarball)
        .args(["manifest.json", "busybox.json", "pause.json", "layer.tar"])
        .output()
        .expect("spawn tar");
    assert_success(&out, "tar the image archive");
    tarball
}

/// The nofile/nproc limit the runtimes may give containers: root cannot raise limits on this
/// VM, so containers get min(4096, our hard limit).
pub fn container_rlimit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into `r`.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_max.min(4096)
}
