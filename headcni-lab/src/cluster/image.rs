//! Image mode (`headcni lab up --image IMAGE`, or `HEADCNI_LAB_IMAGE`): each node's daemon runs
//! from the container image `scripts/build-image.sh` builds, with podman, exactly as the
//! DaemonSet of `deploy/headcni.yaml` (host mode) or `deploy/headcni-daemon-mode.yaml` (daemon
//! mode) runs it ([`super::manifest`]): the init containers
//! (`headcni install` into the CNI bin dir), then the daemon container, privileged, in the
//! node's network namespace (the pod's `hostNetwork`), with every
//! `hostPath` mounted where the manifest mounts it, the ConfigMap's `config.toml` and the
//! API-key Secret (a 0400 file) where the manifest mounts them, the manifest's
//! command/args/env (`NODE_NAME` filled as kubelet fills `spec.nodeName`).
//!
//! Per node: podman runs *inside* the node's network and mount namespaces, so `--network=host`
//! is the node's network namespace (as a CRI runtime gives a `hostNetwork` pod the node's: no
//! namespace of its own; `--network=ns:<node netns>` would name runc's own namespace, where
//! runc refuses podman's default `net.ipv4.ping_group_range` sysctl), and a `hostPath` resolves to the
//! node's own directory. Paths under `/run` (and `/var/run`, a symlink to it on Debian) are
//! already the node's private tmpfs; every other host path gets the node's own directory
//! `<shared>/node-N/host/<path>` bind-mounted over it in the node's mount namespace. A host
//! path that does not exist on the machine (e.g. `/opt/cni/bin`) is made without touching the
//! host: its deepest existing ancestor is replaced, in the node's mount namespace only, by a
//! tmpfs that holds a bind mount of each of the ancestor's entries plus the missing
//! directories. A `hostPath` file (`type: File`: daemon mode's tailscaled) is bind-mounted
//! the same way, from the file the lab provides ([`super::tailscale_pkg`]).
//!
//! Node-specific values the ConfigMap cannot know go in through the daemon's documented
//! `HEADCNI_<SECTION>_<KEY>` overrides (headcni-node `config/env.rs`): the PodCIDR (no
//! kube-apiserver in the lab), the Headscale URL, the approval mode and user, the timeouts.
//!
//! Each node has its own podman store (`--root <shared>/node-N/podman`, `--runroot` in the
//! node's `/run`): libpod refuses one graphroot shared under different runroots. The image is
//! exported once per lab (`podman save`, oci-archive) and loaded into each node's store.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MsFlags, mount};

use super::manifest::{Container, DaemonSetPod, EnvSource, Volume};
use super::ns::Ctx;

/// podman's own limits here: its default `nofile` (1048576) exceeds what this kind of host
/// lets root set, so every container gets explicit, lowered rlimits.
const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// `config.toml` with `chained = []` in its `[cni]` table (which must exist and must not set
/// `chained` already).
///
/// Errors: no `[cni]` table, or one that sets `chained`.
fn without_chain(toml: &str) -> Result<String> {
    if toml.lines().any(|l| l.trim_start().starts_with("chained")) {
        bail!("the ConfigMap's config.toml sets [cni] chained already");
    }
    let mut out = String::with_capacity(toml.len() + 16);
    let mut done = false;
    for line in toml.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim() == "[cni]" {
            out.push_str("chained = []\n");
            done = true;
        }
    }
    if !done {
        bail!("the ConfigMap's config.toml has no [cni] table");
    }
    Ok(out)
}

/// The per-node view of the lab that image mode needs.
#[derive(Debug, Clone)]
pub struct NodeImage {
    /// The image reference (e.g. `localhost/headcni:0.1.0`).
    pub image: String,
    /// Node N's context (network + mount namespace).
    pub ctx: Ctx,
    /// `<shared>/node-N`: the node's own files (visible at the same path inside the node).
    pub node_dir: PathBuf,
    /// The lab's shared directory (the exported image is kept there).
    pub shared: PathBuf,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `HEADCNI_<SECTION>_<KEY>` overrides for this node's daemon.
    pub overrides: Vec<(String, String)>,
    /// The manifest's `hostPath` files: (path on the node, the file on this machine that the
    /// lab bind-mounts there in the node's mount namespace).
    pub host_files: Vec<(PathBuf, PathBuf)>,
    /// Extra `podman run` arguments of the daemon container: daemon mode's stand-in runtime
    /// ([`super::tailscale_pkg::runtime_args`]).
    pub daemon_extra_args: Vec<String>,
    /// Chain nothing after `headcni` ([`super::LabSpec::chain_portmap`] off): the projected
    /// `config.toml` gets `chained = []` in `[cni]`, as the chart's `config.cni.chained: []`
    /// renders it.
    pub no_chain: bool,
}

/// The DaemonSet this lab follows: `deploy/headcni.yaml` in host mode,
/// `deploy/headcni-daemon-mode.yaml` in daemon mode.
pub fn daemonset(mode: super::Mode) -> Result<DaemonSetPod> {
    match mode {
        super::Mode::Host => {
            super::manifest::parse(super::manifest::DEPLOY_MANIFEST).context("deploy/headcni.yaml")
        }
        super::Mode::Daemon => super::manifest::parse(super::manifest::DAEMON_MODE_MANIFEST)
            .context("deploy/headcni-daemon-mode.yaml"),
    }
}

/// The ConfigMap's `[tailscale] tailscaled_path`, if set.
pub fn tailscaled_path(pod: &DaemonSetPod) -> Result<Option<String>> {
    let t = toml_lite::parse(&config_toml(pod)?)?;
    Ok(t.get("tailscale", "tailscaled_path").map(String::from))
}

/// `/var/run/...` → `/run/...` (Debian's `/var/run` is a symlink to `/run`).
fn canonical(host: &str) -> PathBuf {
    match host.strip_prefix("/var/run/") {
        Some(rest) => Path::new("/run").join(rest),
        None if host == "/var/run" => PathBuf::from("/run"),
        None => PathBuf::from(host),
    }
}

/// The CNI bin dir on the node (the manifest's `cni-bin` host path, as the runtime's
/// `CNI_PATH`), and the conflist dir (the ConfigMap's `[cni] conf_dir`, where the daemon
/// container writes it and the runtime reads it).
pub fn node_cni_dirs(pod: &DaemonSetPod) -> Result<(PathBuf, PathBuf)> {
    let cfg = config_toml(pod)?;
    let t: toml_lite::Table = toml_lite::parse(&cfg)?;
    let bin = t.get("cni", "bin_dir").unwrap_or("/opt/cni/bin");
    let conf = t.get("cni", "conf_dir").unwrap_or("/etc/cni/net.d");
    Ok((PathBuf::from(bin), PathBuf::from(conf)))
}

/// The ConfigMap key the daemon container mounts (`config.toml`).
fn config_toml(pod: &DaemonSetPod) -> Result<String> {
    for m in &pod.daemon.mounts {
        if let Some(Volume::ConfigMap { name, items }) = pod.volumes.get(&m.volume) {
            let data = pod
                .config_maps
                .get(name)
                .ok_or_else(|| anyhow!("ConfigMap {name} is not in the manifest"))?;
            let (key, _) = items
                .first()
                .ok_or_else(|| anyhow!("ConfigMap volume {} has no items", m.volume))?;
            return data
                .get(key)
                .cloned()
                .ok_or_else(|| anyhow!("ConfigMap {name} has no key {key}"));
        }
    }
    bail!("the daemon container mounts no ConfigMap")
}

/// A minimal reader of the rendered `config.toml`'s `key = "string"` lines per `[section]`
/// (the lab only needs two paths from it; the daemon itself parses the whole file).
mod toml_lite {
    use std::collections::BTreeMap;

    pub struct Table(BTreeMap<(String, String), String>);

    impl Table {
        pub fn get(&self, section: &str, key: &str) -> Option<&str> {
            self.0
                .get(&(section.to_string(), key.to_string()))
                .map(String::as_str)
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Table> {
        let mut section = String::new();
        let mut out = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.trim().to_string();
            } else if let Some((k, v)) = line.split_once('=')
                && let Some(v) = v.trim().strip_prefix('"').and_then(|v| v.strip_suffix('"'))
            {
                out.insert((section.clone(), k.trim().to_string()), v.to_string());
            }
        }
        Ok(Table(out))
    }
}

impl NodeImage {
    fn podman_global(&self) -> Vec<String> {
        vec![
            format!("--root={}", self.node_dir.join("podman").display()),
            // The node's private /run: per node, gone with the node.
            "--runroot=/run/headcni-lab-podman".into(),
            "--tmpdir=/run/headcni-lab-libpod".into(),
            "--storage-driver=overlay".into(),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=none".into(),
        ]
    }

    /// `podman <global> args` inside the node; its output.
    pub fn podman(&self, args: &[String]) -> Result<Output> {
        let (mut cmd, fds) = self.ctx.command("podman", false)?;
        cmd.args(self.podman_global())
            .args(args)
            .stdin(Stdio::null())
            .env("TMPDIR", "/run");
        let out = cmd
            .output()
            .with_context(|| format!("{}: podman {}", self.node_name, args.join(" ")))?;
        drop(fds);
        Ok(out)
    }

    fn podman_ok(&self, args: &[String]) -> Result<String> {
        let out = self.podman(args)?;
        if !out.status.success() {
            bail!(
                "{}: podman {} failed: {}",
                self.node_name,
                args.first().map(String::as_str).unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Prepares the node for the DaemonSet: its own directories over the manifest's host
    /// paths, its netns file, the ConfigMap and Secret volumes, the image in its store, the
    /// runtime's chained plugins in its CNI bin dir; then runs the init containers.
    pub fn prepare(&self, pod: &DaemonSetPod, api_key: &Path) -> Result<()> {
        let host_paths: Vec<PathBuf> = pod.host_paths().iter().map(|(p, _)| canonical(p)).collect();
        for p in &host_paths {
            if !p.starts_with("/run") {
                let src = self.host_dir(p);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&src)
                    .with_context(|| format!("create {}", src.display()))?;
            }
        }
        let node_dir = self.node_dir.clone();
        let mut paths = host_paths.clone();
        if !self.daemon_extra_args.is_empty() {
            // The stand-in runtime's UAPI directory, in the node's private /run.
            paths.push(PathBuf::from(super::tailscale_pkg::NODE_WIREGUARD_DIR));
        }
        let files = self.host_files.clone();
        for (host, _) in pod.host_files() {
            if !files.iter().any(|(p, _)| p == Path::new(&host)) {
                bail!(
                    "{}: the manifest's hostPath file {host} has no source",
                    self.node_name
                );
            }
        }
        self.ctx
            .run(move || mount_host_paths(&node_dir, &paths, &files))?
            .with_context(|| format!("{}: the manifest's host paths", self.node_name))?;
        self.write_volumes(pod, api_key)?;
        // The runtime's reference plugins (the chained portmap), where a node's package
        // puts them: the manifest's CNI bin dir.
        let (bin_dir, _) = node_cni_dirs(pod)?;
        for plugin in super::LAB_CHAINED_PLUGINS {
            let src = Path::new("/usr/lib/cni").join(plugin);
            let dst = self.host_dir(&bin_dir).join(plugin);
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
        }
        self.load_image()?;
        for c in &pod.init {
            let mut args = vec![
                "run".to_string(),
                "--rm".into(),
                format!("--name={}", c.name),
            ];
            args.extend(self.container_args(pod, c)?);
            self.podman_ok(&args)
                .with_context(|| format!("init container {}", c.name))?;
        }
        Ok(())
    }

    /// The node's own directory behind host path `p` (outside `/run`).
    fn host_dir(&self, p: &Path) -> PathBuf {
        self.node_dir
            .join("host")
            .join(p.strip_prefix("/").unwrap_or(p))
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.node_dir.join("volumes").join(name)
    }

    /// The ConfigMap and Secret volumes as kubelet projects them: a directory per volume
    /// holding each item (the Secret's files with its `defaultMode`).
    fn write_volumes(&self, pod: &DaemonSetPod, api_key: &Path) -> Result<()> {
        for (name, v) in &pod.volumes {
            let dir = self.volume_dir(name);
            match v {
                Volume::ConfigMap { name: cm, items } => {
                    std::fs::create_dir_all(&dir)?;
                    let data = pod
                        .config_maps
                        .get(cm)
                        .ok_or_else(|| anyhow!("ConfigMap {cm} is not in the manifest"))?;
                    for (key, path) in items {
                        let text = data
                            .get(key)
                            .ok_or_else(|| anyhow!("ConfigMap {cm} has no key {key}"))?;
                        let text = if self.no_chain && key == "config.toml" {
                            without_chain(text)?
                        } else {
                            text.clone()
                        };
                        std::fs::write(dir.join(path), text)?;
                    }
                }
                Volume::Secret { mode, items, .. } => {
                    std::fs::create_dir_all(&dir)?;
                    // The lab's one secret: the Headscale API key.
                    let key = std::fs::read(api_key)
                        .with_context(|| format!("read {}", api_key.display()))?;
                    for (_, path) in items {
                        let f = dir.join(path);
                        let _ = std::fs::remove_file(&f);
                        std::fs::write(&f, &key)?;
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
                    }
                }
                Volume::HostPath(_) | Volume::HostFile(_) | Volume::EmptyDir { .. } => {}
            }
        }
        Ok(())
    }

    /// Exports the image from the host's store once per lab and loads it into the node's.
    fn load_image(&self) -> Result<()> {
        let archive = self.shared.join("image.oci.tar");
        if !archive.is_file() {
            let tmp = archive.with_extension("tmp");
            let out = std::process::Command::new("podman")
                .args(["save", "--quiet", "--format=oci-archive", "-o"])
                .arg(&tmp)
                .arg(&self.image)
                .stdin(Stdio::null())
                .output()
                .context("podman save")?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&tmp);
                bail!(
                    "image {}: podman save failed (build it with scripts/build-image.sh): {}",
                    self.image,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::fs::rename(&tmp, &archive)?;
        }
        let loaded = self.podman_ok(&[
            "load".into(),
            "--quiet".into(),
            "-i".into(),
            archive.display().to_string(),
        ])?;
        // An oci-archive loads under the name it was saved with; tag it as the manifest's
        // image is referred to here.
        let id = loaded.rsplit(' ').next().unwrap_or_default().to_string();
        if !id.is_empty() && !loaded.contains(&self.image) {
            let _ = self.podman(&["tag".into(), id, self.image.clone()]);
        }
        Ok(())
    }

    /// `podman run` arguments (after `run`) for container `c` of the manifest's pod.
    pub fn container_args(&self, pod: &DaemonSetPod, c: &Container) -> Result<Vec<String>> {
        let mut a: Vec<String> = ULIMITS.iter().map(|s| s.to_string()).collect();
        if pod.host_network {
            a.push("--network=host".into());
        }
        if c.privileged {
            a.push("--privileged".into());
        }
        if c.read_only_root {
            a.push("--read-only".into());
        }
        if c.no_new_privileges {
            a.push("--security-opt=no-new-privileges".into());
        }
        for m in &c.mounts {
            let ro = if m.read_only { ":ro" } else { "" };
            match pod.volumes.get(&m.volume) {
                Some(Volume::HostPath(p) | Volume::HostFile(p)) => {
                    // The node's path (podman resolves it in the node's mount namespace).
                    a.push(format!(
                        "--volume={}:{}{ro}",
                        canonical(p).display(),
                        m.path
                    ));
                }
                Some(Volume::ConfigMap { .. } | Volume::Secret { .. }) => {
                    a.push(format!(
                        "--volume={}:{}{}",
                        self.volume_dir(&m.volume).display(),
                        m.path,
                        // kubelet mounts ConfigMap and Secret volumes read-only.
                        ":ro"
                    ));
                }
                Some(Volume::EmptyDir { memory, size_limit }) => {
                    if *memory {
                        let size = size_limit
                            .as_deref()
                            .and_then(quantity_bytes)
                            .map(|b| format!(",size={b}"))
                            .unwrap_or_default();
                        a.push(format!("--tmpfs={}:rw,mode=1777{size}", m.path));
                    } else {
                        let d = self.volume_dir(&m.volume);
                        std::fs::create_dir_all(&d)?;
                        a.push(format!("--volume={}:{}", d.display(), m.path));
                    }
                }
                None => bail!("container {} mounts an undeclared volume", c.name),
            }
        }
        for (name, src) in &c.env {
            let value = match src {
                EnvSource::Value(v) => v.clone(),
                EnvSource::FieldRef(f) if f == "spec.nodeName" => self.node_name.clone(),
                EnvSource::FieldRef(f) => bail!("env {name}: fieldRef {f} is not modelled"),
            };
            a.push(format!("--env={name}={value}"));
        }
        if c.name == pod.daemon.name {
            for (k, v) in &self.overrides {
                a.push(format!("--env={k}={v}"));
            }
            a.extend(self.daemon_extra_args.iter().cloned());
        }
        let (entry, rest) = c
            .argv
            .split_first()
            .ok_or_else(|| anyhow!("container {} has no command", c.name))?;
        a.push(format!("--entrypoint={entry}"));
        a.push(self.image.clone());
        a.extend(rest.iter().cloned());
        Ok(a)
    }

    /// Starts the daemon container (replacing a stopped one); returns its pid on the host.
    pub fn run_daemon(&self, pod: &DaemonSetPod) -> Result<i32> {
        let _ = self.podman(&["rm".into(), "--force".into(), pod.daemon.name.clone()]);
        let mut args = vec![
            "run".to_string(),
            "--detach".into(),
            format!("--name={}", pod.daemon.name),
            "--log-driver=k8s-file".into(),
            format!(
                "--log-opt=path={}",
                self.shared
                    .join("logs")
                    .join(format!("{}-daemon.log", self.node_name))
                    .display()
            ),
        ];
        args.extend(self.container_args(pod, &pod.daemon)?);
        self.podman_ok(&args)?;
        let pid = self.podman_ok(&[
            "inspect".into(),
            "--format={{.State.Pid}}".into(),
            pod.daemon.name.clone(),
        ])?;
        pid.parse()
            .with_context(|| format!("the daemon container's pid {pid:?}"))
    }

    /// Stops the daemon container (SIGTERM, 5 s, then SIGKILL: a DaemonSet rollout) and
    /// removes it.
    pub fn stop_daemon(&self, pod: &DaemonSetPod) -> Result<()> {
        let name = pod.daemon.name.clone();
        let out = self.podman(&["stop".into(), "--time=5".into(), name.clone()])?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("no such container") {
                bail!("{}: podman stop: {}", self.node_name, err.trim());
            }
        }
        let _ = self.podman(&["rm".into(), "--force".into(), name]);
        Ok(())
    }

    /// `headcni uninstall` as an operator runs it on the node: the daemon container's image,
    /// mounts and environment, the command replaced.
    pub fn uninstall(&self, pod: &DaemonSetPod) -> Result<()> {
        let mut c = pod.daemon.clone();
        let config = c
            .argv
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| c.argv.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "/etc/headcni/config.toml".into());
        c.argv = vec![
            "/usr/local/bin/headcni".into(),
            "uninstall".into(),
            "--config".into(),
            config,
        ];
        let mut args = vec!["run".to_string(), "--rm".into()];
        args.extend(self.container_args(pod, &c)?);
        self.podman_ok(&args).map(|_| ())
    }

    /// Removes every container of the node's store (best effort; `lab down`).
    pub fn remove_all(&self) {
        let _ = self.podman(&[
            "rm".into(),
            "--all".into(),
            "--force".into(),
            "--time=2".into(),
        ]);
    }
}

impl super::Lab {
    /// Node N's image-mode view and the DaemonSet of the lab's tailnet mode, when the lab
    /// runs in image mode (an image is set).
    pub(super) fn image_node(&self, n: u32) -> Result<Option<(NodeImage, DaemonSetPod)>> {
        let spec = &self.state.spec;
        let Some(image) = spec.image.clone() else {
            return Ok(None);
        };
        let pod = daemonset(spec.mode)?;
        let (host_files, daemon_extra_args) = match spec.mode {
            super::Mode::Host => (Vec::new(), Vec::new()),
            super::Mode::Daemon => {
                let standin = self.bin("tailscaled-standin");
                let files = super::tailscale_pkg::host_files(
                    &pod,
                    tailscaled_path(&pod)?.as_deref(),
                    &standin,
                )?;
                let path = std::env::var("PATH").unwrap_or_default();
                let wg = crate::prereq::find_in_path(&path, "wireguard-go").ok_or_else(|| {
                    anyhow!("wireguard-go is not on PATH (the tailscaled stand-in runs it)")
                })?;
                let args = super::tailscale_pkg::runtime_args(&standin, &wg)?;
                (files, args)
            }
        };
        let node = self.node(n)?;
        let approval = match spec.approval {
            super::Approval::Api => "api",
            super::Approval::AutoApprovers => "auto-approvers",
        };
        let env = |k: &str, v: String| (k.to_string(), v);
        let overrides = vec![
            env("HEADCNI_NODE_POD_CIDR", node.pod_cidr.to_string()),
            env("HEADCNI_NODE_CLUSTER_CIDR", super::CLUSTER_CIDR.to_string()),
            env(
                "HEADCNI_HEADSCALE_URL",
                format!("http://{}:{}", super::HEADSCALE_ADDR, super::HEADSCALE_PORT),
            ),
            env("HEADCNI_HEADSCALE_APPROVAL", approval.to_string()),
            env("HEADCNI_HEADSCALE_USER", "lab".to_string()),
            env("HEADCNI_HEADSCALE_TIMEOUT_SECS", "3".to_string()),
            env(
                "HEADCNI_DAEMON_RECONCILE_INTERVAL_SECS",
                spec.reconcile_secs.to_string(),
            ),
        ];
        Ok(Some((
            NodeImage {
                image,
                ctx: self.node_ctx(n),
                node_dir: self.shared().join(format!("node-{n}")),
                shared: self.shared(),
                node_name: node.name.clone(),
                overrides,
                host_files,
                daemon_extra_args,
                no_chain: !spec.chain_portmap,
            },
            pod,
        )))
    }

    /// The runtime's `CNI_PATH`: in image mode the manifest's CNI bin dir on the node (where
    /// the init container installed the plugin), else [`super::chain::cni_path`].
    pub(super) fn cni_path(&self) -> Result<Vec<PathBuf>> {
        if self.image_mode() {
            return Ok(vec![node_cni_dirs(&daemonset(self.state.spec.mode)?)?.0]);
        }
        Ok(super::chain::cni_path(&self.state.spec.bin_dir))
    }

    /// Where the daemon writes the conflist on a node: in image mode the ConfigMap's
    /// `[cni] conf_dir`, else the lab configuration's `/run/cni/net.d`.
    pub(super) fn conf_dir(&self) -> Result<PathBuf> {
        if self.image_mode() {
            return Ok(node_cni_dirs(&daemonset(self.state.spec.mode)?)?.1);
        }
        Ok(PathBuf::from("/run/cni/net.d"))
    }

    /// True when node daemons run from the image (host or daemon mode).
    pub fn image_mode(&self) -> bool {
        self.state.spec.image.is_some()
    }
}

/// A Kubernetes quantity (`16Mi`, `1G`, `512`) in bytes.
fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Inside the node's mount namespace: the node's own directory over every host path outside
/// `/run` (those under `/run` are made in the node's private `/run`), then each host file
/// `(path, source)`: `source` bind-mounted read-only at `path`, made here only if missing.
fn mount_host_paths(
    node_dir: &Path,
    paths: &[PathBuf],
    files: &[(PathBuf, PathBuf)],
) -> io::Result<()> {
    let mut replaced: Vec<PathBuf> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if p.starts_with("/run") {
            std::fs::create_dir_all(p)?;
            continue;
        }
        ensure_dir(p, &mut replaced, i)?;
        let src = node_dir.join("host").join(p.strip_prefix("/").unwrap_or(p));
        mount(Some(&src), p, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
            io::Error::other(format!("bind {} over {}: {e}", src.display(), p.display()))
        })?;
    }
    for (i, (p, src)) in files.iter().enumerate() {
        ensure_file(p, &mut replaced, paths.len() + i)?;
        let err = |e: nix::Error| {
            io::Error::other(format!("bind {} at {}: {e}", src.display(), p.display()))
        };
        mount(Some(src), p, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Makes file `p` exist (empty, as a mount point) in this mount namespace without creating
/// anything on the host's file systems: its directory is made by [`ensure_dir`], and when
/// that directory is the host's own, it is first replaced (here only) by a tmpfs holding bind
/// mounts of its entries.
fn ensure_file(p: &Path, replaced: &mut Vec<PathBuf>, k: usize) -> io::Result<()> {
    if p.is_file() {
        return Ok(());
    }
    let dir = p
        .parent()
        .ok_or_else(|| io::Error::other(format!("{}: no directory", p.display())))?;
    ensure_dir(dir, replaced, k)?;
    if !replaced.iter().any(|r| dir.starts_with(r)) {
        shadow_dir(dir, k)?;
        replaced.push(dir.to_path_buf());
    }
    File::create(p).map(drop)
}

/// Makes directory `p` exist in this mount namespace without creating anything on the host's
/// file systems: when missing, its deepest existing ancestor is replaced (here only) by a
/// tmpfs holding bind mounts of the ancestor's entries, in which `p` is then created.
fn ensure_dir(p: &Path, replaced: &mut Vec<PathBuf>, k: usize) -> io::Result<()> {
    if p.is_dir() {
        return Ok(());
    }
    let mut anc = p.parent().unwrap_or(Path::new("/"));
    while !anc.is_dir() {
        anc = anc.parent().unwrap_or(Path::new("/"));
    }
    if anc == Path::new("/") {
        return Err(io::Error::other(format!(
            "{}: will not replace / to create it",
            p.display()
        )));
    }
    if !replaced.iter().any(|r| anc.starts_with(r)) {
        shadow_dir(anc, k)?;
        replaced.push(anc.to_path_buf());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
}

/// Replaces directory `anc`, in this mount namespace only, by a tmpfs (same mode) holding a
/// bind mount of each of its entries (symlinks copied), so that new entries can be made in
/// it without touching the host. `k` makes the staging directory's name unique.
fn shadow_dir(anc: &Path, k: usize) -> io::Result<()> {
    let stage = PathBuf::from(format!("/run/headcni-lab-stage-{k}"));
    std::fs::create_dir_all(&stage)?;
    let mode = std::fs::metadata(anc)?.permissions().mode() & 0o7777;
    let err = |what: String| move |e: nix::Error| io::Error::other(format!("{what}: {e}"));
    mount(
        Some("tmpfs"),
        &stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode={mode:o}").as_str()),
    )
    .map_err(err(format!("tmpfs for {}", anc.display())))?;
    for e in std::fs::read_dir(anc)? {
        let e = e?;
        let ty = e.file_type()?;
        let dst = stage.join(e.file_name());
        if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
            continue;
        }
        if ty.is_dir() {
            std::fs::create_dir(&dst)?;
        } else {
            File::create(&dst)?;
        }
        mount(
            Some(&e.path()),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err(format!("bind {}", e.path().display())))?;
    }
    mount(
        Some(&stage),
        anc,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(err(format!("move the tmpfs onto {}", anc.display())))?;
    let _ = std::fs::remove_dir(&stage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_chain_puts_an_empty_chain_in_the_cni_table_of_the_configmap() {
        let pod = super::super::manifest::parse(super::super::manifest::DEPLOY_MANIFEST).unwrap();
        let toml = pod
            .config_maps
            .values()
            .find_map(|m| m.get("config.toml").cloned())
            .expect("the manifest's config.toml");
        let out = without_chain(&toml).unwrap();
        assert!(out.contains("[cni]\nchained = []\n"), "{out}");
        assert_eq!(out.lines().count(), toml.lines().count() + 1);
        assert!(without_chain(&out).is_err(), "chained is set once");
        assert!(without_chain("[node]\n").is_err());
    }

    fn node() -> NodeImage {
        NodeImage {
            image: "localhost/headcni:test".into(),
            ctx: Ctx::net("/run/netns/x-node-1"),
            node_dir: "/run/headcni-lab/x/shared/node-1".into(),
            shared: "/run/headcni-lab/x/shared".into(),
            node_name: "node-1".into(),
            no_chain: false,
            overrides: vec![("HEADCNI_NODE_POD_CIDR".into(), "10.244.1.0/24".into())],
            host_files: Vec::new(),
            daemon_extra_args: Vec::new(),
        }
    }

    #[test]
    fn the_daemon_container_gets_every_host_mount_of_the_manifest() {
        let pod = daemonset(super::super::Mode::Host).unwrap();
        let args = node().container_args(&pod, &pod.daemon).unwrap();
        for (host, _) in pod.host_paths() {
            let Some(m) = pod.daemon_mount_of(&host) else {
                continue;
            };
            let want = format!("--volume={}:{}", canonical(&host).display(), m.path);
            assert!(
                args.iter().any(|a| a.starts_with(&want)),
                "{want} not in {args:?}"
            );
        }
        assert!(args.contains(&"--privileged".to_string()));
        assert!(args.contains(&"--network=host".to_string()));
        assert!(args.contains(&"--env=NODE_NAME=node-1".to_string()));
        assert!(args.contains(&"--env=HEADCNI_NODE_POD_CIDR=10.244.1.0/24".to_string()));
        assert!(args.iter().any(|a| a.starts_with(
            "--volume=/run/headcni-lab/x/shared/node-1/volumes/api-key:/etc/headcni-secret:ro"
        )));
        // The image, then the manifest's command after its first word.
        let i = args
            .iter()
            .position(|a| a == "localhost/headcni:test")
            .unwrap();
        assert_eq!(args[i + 1], "daemon");
        assert_eq!(args[i - 1], format!("--entrypoint={}", pod.daemon.argv[0]));
    }

    #[test]
    fn quantities_and_var_run() {
        assert_eq!(quantity_bytes("16Mi"), Some(16 << 20));
        assert_eq!(quantity_bytes("2x"), None);
        assert_eq!(
            canonical("/var/run/tailscale"),
            PathBuf::from("/run/tailscale")
        );
        assert_eq!(canonical("/var/lib/cni"), PathBuf::from("/var/lib/cni"));
    }

    #[test]
    fn the_cni_dirs_come_from_the_configmap() {
        let pod = daemonset(super::super::Mode::Host).unwrap();
        assert_eq!(
            node_cni_dirs(&pod).unwrap(),
            (
                PathBuf::from("/opt/cni/bin"),
                PathBuf::from("/etc/cni/net.d")
            )
        );
    }
}
