//! The multi-node lab: `headcni lab up|status|exec|down` and the end-to-end tests' test bed.
//!
//! Topology (all names prefixed by the lab name, default `hclab`):
//!
//! ```text
//!   <name>-hub   bridge ul0 192.168.77.254/24, the Headscale stand-in on :8080
//!   <name>-inet  "the internet": 192.168.77.253/24 on the underlay, 198.51.100.1/32 on lo
//!   <name>-node-N  eth0 192.168.77.N/24 (default via .253), its own mount namespace with a
//!                tmpfs /run; tailscale0 (wireguard-go, by the tailscaled stand-in), 100.64.0.N;
//!                the real `headcni daemon` (host mode, PodCIDR 10.244.N.0/24); pods
//!                pod-N-M attached by exec'ing the conflist the daemon wrote (CNI protocol)
//! ```
//!
//! With `--dual-stack` every node, pod and the "internet" also get IPv6 ([`dual_stack`]).
//!
//! Nothing outside the lab's namespaces is changed: every link, address, route, rule and nft
//! table lives in a lab namespace; every file lives in `/run/headcni-lab/<name>` or in a
//! node's private `/run`. `down` (also after a crash) kills every process in the lab's
//! namespaces and removes them.

pub mod chain;
pub mod dual_stack;
pub mod image;
pub mod manifest;
pub mod ns;
pub mod scale;
pub mod tailscale_pkg;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use headcni_core::link::{BridgeSpec, LinkManager, RouteManager, RouteSpec, VethSpec};
use headcni_netlink::{NetlinkHandle, netns};
use headcni_testkit::netns::{create_named, delete_named};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::Rtnl;
use ns::Ctx;

/// Root of every lab's files on the host.
pub const RUN_ROOT: &str = "/run/headcni-lab";
/// The Headscale stand-in's address on the underlay.
pub const HEADSCALE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
/// The Headscale stand-in's port.
pub const HEADSCALE_PORT: u16 = 8080;
/// The "internet" namespace's underlay address (the nodes' default gateway).
pub const INET_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 253);
/// The address a pod reaches "on the internet" (TEST-NET-2, on the inet namespace's lo).
pub const INET_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The lab tailnet's MagicDNS base domain (Headscale `dns.base_domain`, with
/// `dns.magic_dns` on): node-N is `node-N.tailnet.lab` at 100.100.100.100.
pub const BASE_DOMAIN: &str = "tailnet.lab";
/// The cluster CIDR; node N gets 10.244.N.0/24.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The CNI plugins the lab's conflist chains after `headcni` (from Debian's
/// `containernetworking-plugins`, found through `chain::cni_path`).
pub const LAB_CHAINED_PLUGINS: &[&str] = &["portmap"];
/// Directories each node gets in its private `/run`.
const NODE_RUN_DIRS: &[&str] = &[
    "netns",
    "wireguard",
    "tailscale",
    "headcni",
    "cni/net.d",
    "cni/networks",
];

/// How the node's tailnet is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The lab runs a tailscaled stand-in on `tailscale0`; the daemon drives it (host mode).
    Host,
    /// The daemon supervises its own tailscaled stand-in on `headcni01` (daemon mode).
    Daemon,
}

/// Which Headscale API generation the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Api {
    /// v0.29 (`approve_routes`).
    #[value(name = "0.29")]
    #[serde(rename = "0.29")]
    V0_29,
    /// v0.25 (`/api/v1/routes` enable).
    #[value(name = "0.25")]
    #[serde(rename = "0.25")]
    V0_25,
}

impl Api {
    /// The Headscale policy generation of this API generation.
    fn policy_version(self) -> headcni_headscale::policy::PolicyVersion {
        use headcni_headscale::policy::PolicyVersion;
        match self {
            Api::V0_29 => PolicyVersion::V0_29,
            Api::V0_25 => PolicyVersion::V0_25,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Api::V0_29 => "0.29",
            Api::V0_25 => "0.25",
        }
    }
}

/// How routes get approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// The daemon approves its route through the REST API.
    Api,
    /// A Headscale policy's `autoApprovers` covers the cluster CIDR.
    AutoApprovers,
}

/// What to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    /// Prefix of every namespace and of the lab's directory (1-24 ASCII letters or digits).
    pub name: String,
    /// Nodes at start.
    pub nodes: u32,
    /// Pods per node at start.
    pub pods: u32,
    /// Tailnet mode.
    pub mode: Mode,
    /// Headscale API generation.
    pub api: Api,
    /// Route approval.
    pub approval: Approval,
    /// Directory holding `headcni`, `headcni-daemon`, `headscale-standin`,
    /// `tailscaled-standin`.
    pub bin_dir: PathBuf,
    /// The daemon's reconcile interval (the lab uses a short one so drift repair is quick).
    pub reconcile_secs: u64,
    /// Set every node up as Docker leaves a host: iptables `filter FORWARD` policy `DROP`
    /// and bridged frames through iptables (`net.bridge.bridge-nf-call-iptables=1`).
    #[serde(default)]
    pub forward_drop: bool,
    /// The Headscale policy (HuJSON) the stand-in enforces, e.g. `headcni policy`'s output;
    /// `None`: none, or with [`Approval::AutoApprovers`] one whose `autoApprovers` cover the
    /// cluster CIDR for the lab's user.
    #[serde(default)]
    pub policy: Option<String>,
    /// Dual-stack (`lab up --dual-stack`): every node also gets an IPv6 PodCIDR and underlay
    /// address, the "internet" an IPv6 address ([`dual_stack`]).
    #[serde(default)]
    pub dual_stack: bool,
    /// The daemons' `[node] masquerade_ipv6` (with [`LabSpec::dual_stack`]).
    #[serde(default = "default_true")]
    pub masquerade_ipv6: bool,
    /// Image mode ([`image`]): each node's daemon runs from this container image (in the
    /// host's podman store, e.g. `localhost/headcni:0.1.0` from `scripts/build-image.sh`)
    /// as deploy/headcni.yaml's DaemonSet runs it, or with [`Mode::Daemon`] as
    /// deploy/headcni-daemon-mode.yaml's does (the `tailscaled-standin` of `bin_dir` as the
    /// node's tailscaled, [`tailscale_pkg`]).
    #[serde(default)]
    pub image: Option<String>,
    /// Chain Debian's `portmap` after `headcni` (default). Its plugins support CNI ≤ 1.0.0,
    /// so the daemon's negotiated conflist is then 1.0.0 and a libcni runtime never runs
    /// STATUS; without it the conflist is 1.1.0. (Image mode chains what the manifest's
    /// ConfigMap says.)
    #[serde(default = "default_true")]
    pub chain_portmap: bool,
}

fn default_true() -> bool {
    true
}

impl LabSpec {
    /// The defaults of `headcni lab up`, with binaries next to the running executable.
    pub fn new(name: &str) -> Result<LabSpec> {
        Ok(LabSpec {
            name: name.to_string(),
            nodes: 2,
            pods: 2,
            mode: Mode::Host,
            api: Api::V0_29,
            approval: Approval::Api,
            bin_dir: default_bin_dir()?,
            reconcile_secs: 2,
            forward_drop: false,
            policy: None,
            dual_stack: false,
            masquerade_ipv6: true,
            image: std::env::var(IMAGE_ENV).ok().filter(|s| !s.is_empty()),
            chain_portmap: true,
        })
    }
}

/// Makes every [`LabSpec::new`] use image mode with this image reference (how the e2e suite
/// reruns in image mode).
pub const IMAGE_ENV: &str = "HEADCNI_LAB_IMAGE";

/// The directory of the running executable (where the lab's companion binaries are built),
/// or `HEADCNI_LAB_BIN_DIR`.
pub fn default_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HEADCNI_LAB_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    // Test executables live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        return Ok(dir.parent().unwrap_or(dir).to_path_buf());
    }
    Ok(dir.to_path_buf())
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// N (1-based).
    pub index: u32,
    /// `node-N` (the Kubernetes/Headscale node name).
    pub name: String,
    /// 192.168.77.N.
    pub underlay: Ipv4Addr,
    /// 10.244.N.0/24.
    pub pod_cidr: Ipv4Network,
    /// With dual-stack: fd00:10:244:N::/64 ([`dual_stack::pod_cidr_v6`]).
    #[serde(default)]
    pub pod_cidr_v6: Option<Ipv6Network>,
    /// With dual-stack: fd00:77::N ([`dual_stack::underlay_v6`]).
    #[serde(default)]
    pub underlay_v6: Option<Ipv6Addr>,
    /// The tailscaled stand-in's pid (host mode).
    pub tailscaled_pid: Option<i32>,
    /// The daemon's pid.
    pub daemon_pid: Option<i32>,
}

impl Node {
    /// The node's PodCIDRs: IPv4, then IPv6 with dual-stack.
    pub fn pod_cidrs(&self) -> Vec<IpNetwork> {
        let mut v = vec![IpNetwork::V4(self.pod_cidr)];
        v.extend(self.pod_cidr_v6.map(IpNetwork::V6));
        v
    }
}

/// A pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// `pod-N-M`.
    pub name: String,
    /// Its node's index.
    pub node: u32,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// Its IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address (dual-stack labs).
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// The chain's ADD result (the `prevResult` of DEL).
    pub result: Value,
}

impl Pod {
    /// The pod's netns path inside its node's mount namespace.
    pub fn netns(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    spec: LabSpec,
    nodes: BTreeMap<u32, Node>,
    pods: Vec<Pod>,
    headscale_pid: Option<i32>,
}

/// A lab that is up (or being built). Every change is saved to
/// `/run/headcni-lab/<name>/state.json`, so `status`, `exec` and `down` work from another
/// process.
#[derive(Debug)]
pub struct Lab {
    state: State,
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("lab: {msg}");
}

impl Lab {
    /// The lab's root directory on the host.
    pub fn root(name: &str) -> PathBuf {
        Path::new(RUN_ROOT).join(name)
    }

    /// The directory bind-mounted at the same path into every node.
    pub fn shared(&self) -> PathBuf {
        Self::root(&self.state.spec.name).join("shared")
    }

    fn ns_dir(&self) -> PathBuf {
        Self::root(&self.state.spec.name).join("ns")
    }

    /// The spec.
    pub fn spec(&self) -> &LabSpec {
        &self.state.spec
    }

    /// Nodes by index.
    pub fn nodes(&self) -> &BTreeMap<u32, Node> {
        &self.state.nodes
    }

    /// Pods.
    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.state.pods.iter().find(|p| p.name == name)
    }

    fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.state.spec.name)
    }

    fn netns_path(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns_name(what)))
    }

    /// The hub namespace's context (the Headscale stand-in runs there).
    pub fn hub_ctx(&self) -> Ctx {
        Ctx::net(self.netns_path("hub"))
    }

    /// The "internet" namespace's context.
    pub fn inet_ctx(&self) -> Ctx {
        Ctx::net(self.netns_path("inet"))
    }

    /// Node N's context (its netns and its mount namespace).
    pub fn node_ctx(&self, node: u32) -> Ctx {
        Ctx {
            net: self.netns_path(&format!("node-{node}")),
            mnt: Some(self.ns_dir().join(format!("node-{node}.mnt"))),
            inner_net: None,
        }
    }

    /// A pod's context: its node's mount namespace, the pod's netns.
    pub fn pod_ctx(&self, pod: &Pod) -> Ctx {
        let mut c = self.node_ctx(pod.node);
        c.inner_net = Some(PathBuf::from(pod.netns()));
        c
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.state.spec.bin_dir.join(name)
    }

    fn save(&self) -> Result<()> {
        let path = Self::root(&self.state.spec.name).join("state.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Loads a lab that is up.
    pub fn load(name: &str) -> Result<Lab> {
        let path = Self::root(name).join("state.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("no lab {name:?} is up ({} missing)", path.display()))?;
        Ok(Lab {
            state: serde_json::from_slice(&bytes).context("reading the lab state")?,
        })
    }

    /// Builds the whole lab: underlay, Headscale stand-in, `spec.nodes` nodes with their
    /// tailnet and daemon, `spec.pods` pods per node; waits until every pod reaches every
    /// other. On failure everything is torn down again.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        if spec.name.is_empty()
            || spec.name.len() > 24
            || !spec.name.chars().all(|c| c.is_ascii_alphanumeric())
        {
            bail!("lab name {:?}: 1-24 ASCII letters or digits", spec.name);
        }
        if !(1..=200).contains(&spec.nodes) {
            bail!("--nodes must be 1..=200");
        }
        for b in [
            "headcni",
            "headcni-daemon",
            "headscale-standin",
            "tailscaled-standin",
        ] {
            let p = spec.bin_dir.join(b);
            if !p.is_file() {
                bail!(
                    "{} is missing: build the workspace first (`cargo build --release --workspace`)",
                    p.display()
                );
            }
        }
        let root = Self::root(&spec.name);
        if root.join("state.json").exists()
            || netns::exists(format!("/run/netns/{}-hub", spec.name))
        {
            bail!(
                "lab {:?} is already up: `headcni lab status` or `headcni lab down`",
                spec.name
            );
        }
        let mut lab = Lab {
            state: State {
                spec: spec.clone(),
                nodes: BTreeMap::new(),
                pods: Vec::new(),
                headscale_pid: None,
            },
        };
        match lab.build(&spec) {
            Ok(()) => Ok(lab),
            Err(e) => {
                progress(format!("failed: {e:#}; tearing down"));
                eprint!("{}", lab.log_tails(20));
                if std::env::var_os("HEADCNI_LAB_KEEP_ON_FAILURE").is_some() {
                    progress("HEADCNI_LAB_KEEP_ON_FAILURE set: leaving the lab up for inspection");
                    return Err(e);
                }
                let _ = Lab::down(&spec.name);
                Err(e)
            }
        }
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        let root = Self::root(&spec.name);
        std::fs::create_dir_all(&root)?;
        set_mode(&root, 0o700)?;
        std::fs::create_dir_all(self.shared().join("logs"))?;
        set_mode(&self.shared(), 0o700)?;
        ns::private_mount_dir(&self.ns_dir())?;
        self.save()?;
        progress(if spec.dual_stack {
            "underlay: hub (bridge ul0), inet (198.51.100.1, 2001:db8::1)"
        } else {
            "underlay: hub (bridge ul0), inet (198.51.100.1)"
        });
        self.build_underlay()?;
        self.start_headscale()?;
        for n in 1..=spec.nodes {
            self.add_node(n)?;
        }
        for n in 1..=spec.nodes {
            self.wait_ready(n, Duration::from_secs(30))?;
        }
        for n in 1..=spec.nodes {
            for _ in 0..spec.pods {
                let pod = self.add_pod(n)?;
                progress(format!(
                    "{}: CNI ADD on node-{n} → {}{}",
                    pod.name,
                    pod.ip.map(|i| i.to_string()).unwrap_or_default(),
                    pod.ip6.map(|i| format!(", {i}")).unwrap_or_default()
                ));
            }
        }
        let t = Instant::now();
        // Pings are sequential: the budget grows with the pods (issue 13: 32 nodes x 2 pods).
        self.wait_full_mesh(
            Duration::from_secs(30) + Duration::from_millis(250) * (spec.nodes * spec.pods),
        )?;
        progress(format!(
            "every pod reaches every pod ({:.2} s after the last ADD)",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    fn build_underlay(&mut self) -> Result<()> {
        let hub = create_named(&self.ns_name("hub")).map_err(|e| anyhow!("hub netns: {e}"))?;
        let inet = create_named(&self.ns_name("inet")).map_err(|e| anyhow!("inet netns: {e}"))?;
        let dual = self.state.spec.dual_stack;
        block_on(async move {
            let h = NetlinkHandle::for_netns(&hub).await?;
            Rtnl::for_netns(&hub)?.set_link_up("lo", None).await?;
            h.ensure_bridge(&BridgeSpec {
                name: "ul0".into(),
                mtu: Some(1500),
                addresses: vec![IpNetwork::V4(Ipv4Network::new(HEADSCALE_ADDR, 24)?)],
            })
            .await?;
            h.create_veth(&VethSpec {
                host_name: "inet".into(),
                container_name: "eth0".into(),
                container_netns: inet.clone(),
                mtu: Some(1500),
                container_mac: None,
                master: Some("ul0".into()),
                hairpin: false,
            })
            .await?;
            let i = NetlinkHandle::for_netns(&inet).await?;
            Rtnl::for_netns(&inet)?.set_link_up("lo", None).await?;
            i.add_address("eth0", IpNetwork::V4(Ipv4Network::new(INET_GW, 24)?))
                .await?;
            i.add_address("lo", IpNetwork::V4(Ipv4Network::new(INET_ADDR, 32)?))
                .await?;
            if dual {
                i.add_address("eth0", dual_stack::underlay_v6_net(dual_stack::INET_GW_V6))
                    .await?;
                i.add_address(
                    "lo",
                    IpNetwork::V6(Ipv6Network::new(dual_stack::INET_ADDR_V6, 128)?),
                )
                .await?;
            }
            anyhow::Ok(())
        })
    }

    /// Starts (or restarts) the Headscale stand-in in the hub; its state file keeps the
    /// tailnet across restarts. Waits until it accepts connections.
    pub fn start_headscale(&mut self) -> Result<()> {
        let shared = self.shared();
        let spec = self.state.spec.clone();
        let mut args: Vec<String> = vec![
            format!("--listen={HEADSCALE_ADDR}:{HEADSCALE_PORT}"),
            format!(
                "--state-file={}",
                shared.join("headscale-state.json").display()
            ),
            format!("--api-key-file={}", shared.join("api-key").display()),
            format!("--base-domain={BASE_DOMAIN}"),
            "--magic-dns".to_string(),
            format!(
                "--preauth-key-file={}",
                shared.join("preauth-key").display()
            ),
            format!("--api={}", spec.api.flag()),
        ];
        if let Some(text) = &spec.policy {
            let policy = shared.join("policy.hujson");
            std::fs::write(&policy, text)?;
            args.push(format!("--policy={}", policy.display()));
        } else if spec.approval == Approval::AutoApprovers {
            let policy = shared.join("policy.json");
            std::fs::write(
                &policy,
                // The pre-auth key's user "lab", written as this Headscale generation needs
                // it ("lab" on 0.25, where "lab@" matches no user; "lab@" since 0.26).
                serde_json::to_vec_pretty(&json!({
                    "autoApprovers": {"routes": dual_stack::cluster_cidrs(CLUSTER_CIDR, spec.dual_stack)
                        .into_iter()
                        .map(|c| (c, json!([spec.api.policy_version().user_token("lab")])))
                        .collect::<serde_json::Map<_, _>>()}
                }))?,
            )?;
            args.push(format!("--policy={}", policy.display()));
        }
        let pid = self.spawn_logged(
            &self.hub_ctx(),
            &self.bin("headscale-standin"),
            &args,
            "headscale",
        )?;
        self.state.headscale_pid = Some(pid);
        self.save()?;
        let addr = SocketAddr::from((HEADSCALE_ADDR, HEADSCALE_PORT));
        wait_for(
            Duration::from_secs(10),
            "the Headscale stand-in to listen",
            || {
                Ok(self.hub_ctx().run(move || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })? && shared.join("api-key").is_file()
                    && shared.join("preauth-key").is_file())
            },
        )?;
        progress(format!(
            "Headscale stand-in (API {}) on {addr}, pid {pid}",
            spec.api.flag()
        ));
        Ok(())
    }

    /// The last `lines` lines of every log in `shared/logs` (for failure reports: the logs
    /// go away with the lab).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.shared().join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("---- {} (last {lines} lines)\n", p.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Restarts the Headscale stand-in with `policy` (HuJSON) as its policy; its state
    /// (nodes, keys, approvals) is kept, and the peers' netmaps follow the new policy.
    pub fn replace_policy(&mut self, policy: &str) -> Result<()> {
        self.state.spec.policy = Some(policy.to_owned());
        self.save()?;
        self.stop_headscale()?;
        self.start_headscale()
    }

    /// Stops the Headscale stand-in (SIGTERM).
    pub fn stop_headscale(&mut self) -> Result<()> {
        if let Some(pid) = self.state.headscale_pid.take() {
            ns::terminate(&[pid], Duration::from_secs(5));
        }
        self.save()
    }

    /// Spawns `program args` detached in `ctx`, stdout and stderr appended to
    /// `shared/logs/<log>.log`; a thread reaps it when this process lives long enough.
    fn spawn_logged(&self, ctx: &Ctx, program: &Path, args: &[String], log: &str) -> Result<i32> {
        let log_path = self.shared().join("logs").join(format!("{log}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let (mut cmd, fds) = ctx.command(program, true)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("PATH", crate::prereq::NODE_PATH)
            // Every tailscaled stand-in of the lab (host mode's, and daemon mode's through the
            // daemon's environment) writes its state file at start-up, before any login, as
            // real tailscaled does (`cmd/tailscaled/tailscaled.go` → `ipn/store/stores.go`).
            .env("HEADCNI_STANDIN_WRITE_STATE_AT_START", "true");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        drop(fds);
        let pid = child.id() as i32;
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(pid)
    }

    /// The daemon's configuration file for node N (written by [`Lab::add_node`]).
    pub fn daemon_config(&self, node: u32) -> PathBuf {
        self.shared()
            .join(format!("node-{node}"))
            .join("config.toml")
    }

    /// Creates node N: netns + mount namespace, underlay link, the tailscaled stand-in (host
    /// mode) and the daemon. Does not wait for readiness.
    pub fn add_node(&mut self, n: u32) -> Result<()> {
        if self.state.nodes.contains_key(&n) {
            bail!("node-{n} exists");
        }
        let name = format!("node-{n}");
        let underlay = Ipv4Addr::new(192, 168, 77, u8::try_from(n).context("node index")?);
        let pod_cidr = Ipv4Network::new(Ipv4Addr::new(10, 244, u8::try_from(n)?, 0), 24)?;
        let (pod_cidr_v6, underlay_v6) = if self.state.spec.dual_stack {
            (
                Some(dual_stack::pod_cidr_v6(n).map_err(|e| anyhow!(e))?),
                Some(dual_stack::underlay_v6(n).map_err(|e| anyhow!(e))?),
            )
        } else {
            (None, None)
        };
        progress(format!(
            "{name}: netns + mount namespace, eth0 {underlay}/24{}",
            underlay_v6.map(|a| format!(", {a}/64")).unwrap_or_default()
        ));
        let net = create_named(&self.ns_name(&name)).map_err(|e| anyhow!("{name} netns: {e}"))?;
        self.state.nodes.insert(
            n,
            Node {
                index: n,
                name: name.clone(),
                underlay,
                pod_cidr,
                pod_cidr_v6,
                underlay_v6,
                tailscaled_pid: None,
                daemon_pid: None,
            },
        );
        self.save()?;
        let ctx = self.node_ctx(n);
        let mnt = ctx
            .mnt
            .clone()
            .ok_or_else(|| anyhow!("node without a mount namespace"))?;
        ns::create_mntns(&mnt, &self.shared(), NODE_RUN_DIRS)?;
        let hub = self.netns_path("hub");
        let host_end = format!("n{n}");
        block_on(async move {
            let h = NetlinkHandle::for_netns(&hub).await?;
            h.create_veth(&VethSpec {
                host_name: host_end,
                container_name: "eth0".into(),
                container_netns: net.clone(),
                mtu: Some(1500),
                container_mac: None,
                master: Some("ul0".into()),
                hairpin: false,
            })
            .await?;
            let nh = NetlinkHandle::for_netns(&net).await?;
            Rtnl::for_netns(&net)?.set_link_up("lo", None).await?;
            nh.add_address("eth0", IpNetwork::V4(Ipv4Network::new(underlay, 24)?))
                .await?;
            nh.add_route(&RouteSpec::new(
                IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?),
                Some(IpAddr::V4(INET_GW)),
                Some("eth0"),
            ))
            .await?;
            if let Some(v6) = underlay_v6 {
                nh.add_address("eth0", dual_stack::underlay_v6_net(v6))
                    .await?;
                nh.add_route(&RouteSpec::new(
                    IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0)?),
                    Some(IpAddr::V6(dual_stack::INET_GW_V6)),
                    Some("eth0"),
                ))
                .await?;
            }
            anyhow::Ok(())
        })?;
        if let (Some(cidr), Some(via)) = (pod_cidr_v6, underlay_v6) {
            // The "internet" routes the node's IPv6 PodCIDR to it, as a network routes a
            // node's delegated prefix: un-masqueraded pod traffic gets its answers.
            let inet = self.netns_path("inet");
            block_on(async move {
                NetlinkHandle::for_netns(&inet)
                    .await?
                    .add_route(&RouteSpec::new(
                        IpNetwork::V6(cidr),
                        Some(IpAddr::V6(via)),
                        Some("eth0"),
                    ))
                    .await?;
                anyhow::Ok(())
            })?;
        }
        if self.state.spec.forward_drop {
            self.docker_like_firewall(n)?;
        }
        self.write_daemon_config(n)?;
        if self.state.spec.mode == Mode::Host {
            // As on a real node, tailscaled is up before the DaemonSet starts.
            self.start_tailscaled(n)?;
            self.wait_tailnet(n, Duration::from_secs(20))?;
        }
        if let Some((img, pod)) = self.image_node(n)? {
            progress(format!(
                "node-{n}: image mode: {} ({})",
                img.image,
                match self.state.spec.mode {
                    Mode::Host => "deploy/headcni.yaml",
                    Mode::Daemon => "deploy/headcni-daemon-mode.yaml",
                }
            ));
            img.prepare(&pod, &self.shared().join("api-key"))?;
        }
        self.start_daemon(n)?;
        Ok(())
    }

    /// node-N's firewall as Docker leaves a host (`LabSpec::forward_drop`): `iptables -P
    /// FORWARD DROP` (the host's default iptables, nft on Debian bookworm) and
    /// `br_netfilter` with `bridge-nf-call-iptables=1` (per network namespace).
    fn docker_like_firewall(&self, n: u32) -> Result<()> {
        let ctx = self.node_ctx(n);
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stdin(Stdio::null())
            .status();
        for args in [
            &["iptables", "-w", "5", "-P", "FORWARD", "DROP"][..],
            &["ip6tables", "-w", "5", "-P", "FORWARD", "DROP"][..],
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"][..],
        ] {
            let (mut cmd, _fds) = ctx.command(args[0], false)?;
            let out = cmd
                .args(&args[1..])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("node-{n}: {args:?}"))?;
            if !out.status.success() {
                bail!(
                    "node-{n}: {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    fn write_daemon_config(&self, n: u32) -> Result<()> {
        let node = self.node(n)?;
        let spec = &self.state.spec;
        let shared = self.shared();
        let (mode, tailscale) = match spec.mode {
            Mode::Host => (
                "host",
                "socket = \"/run/tailscale/tailscaled.sock\"\ninterface = \"tailscale0\"\n"
                    .to_string(),
            ),
            Mode::Daemon => (
                "daemon",
                format!(
                    "tailscaled_path = \"{}\"\nport = 41641\n",
                    self.bin("tailscaled-standin").display()
                ),
            ),
        };
        let approval = match spec.approval {
            Approval::Api => "api",
            Approval::AutoApprovers => "auto-approvers",
        };
        let toml = format!(
            "# headcni lab: node-{n}\n\
             [node]\nname = \"{name}\"\npod_cidr = {cidr}\ncluster_cidr = {cluster}\nmasquerade_ipv6 = {masq6}\n\n\
             [cni]\nconf_dir = \"/run/cni/net.d\"\nbin_dir = \"{bin}\"\ndata_dir = \"/run/cni/networks\"\n\
             chained = [{chained}]\n\n\
             [tailscale]\nmode = \"{mode}\"\n{tailscale}\n\
             [headscale]\nurl = \"http://{HEADSCALE_ADDR}:{HEADSCALE_PORT}\"\napi_key_file = \"{key}\"\napproval = \"{approval}\"\nuser = \"lab\"\ntimeout_secs = 3\n\n\
             [daemon]\nlisten = \"127.0.0.1:8081\"\nstate_dir = \"/run/headcni/state\"\nreconcile_interval_secs = {rec}\n",
            name = node.name,
            chained = if spec.chain_portmap {
                "{ type = \"portmap\", capabilities = { portMappings = true } }"
            } else {
                ""
            },
            cidr = dual_stack::toml_list(
                &node
                    .pod_cidrs()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
            cluster =
                dual_stack::toml_list(&dual_stack::cluster_cidrs(CLUSTER_CIDR, spec.dual_stack)),
            masq6 = spec.masquerade_ipv6,
            bin = spec.bin_dir.display(),
            key = shared.join("api-key").display(),
            rec = spec.reconcile_secs,
        );
        let path = self.daemon_config(n);
        std::fs::create_dir_all(path.parent().unwrap_or(&shared))?;
        std::fs::write(&path, toml)?;
        Ok(())
    }

    fn node(&self, n: u32) -> Result<&Node> {
        self.state
            .nodes
            .get(&n)
            .ok_or_else(|| anyhow!("no node-{n}"))
    }

    /// Starts node N's tailscaled stand-in on `tailscale0` logged in with the lab's
    /// pre-auth key (as `tailscale up --login-server … --auth-key file:…` would).
    pub fn start_tailscaled(&mut self, n: u32) -> Result<()> {
        let shared = self.shared();
        let node = self.node(n)?.clone();
        let args = vec![
            "--tun=tailscale0".to_string(),
            "--socket=/run/tailscale/tailscaled.sock".to_string(),
            "--statedir=/run/tailscale/state".to_string(),
            "--port=41641".to_string(),
            "--no-logs-no-support".to_string(),
            format!("--login-server=http://{HEADSCALE_ADDR}:{HEADSCALE_PORT}"),
            format!("--authkey-file={}", shared.join("preauth-key").display()),
            format!("--hostname={}", node.name),
        ];
        let pid = self.spawn_logged(
            &self.node_ctx(n),
            &self.bin("tailscaled-standin"),
            &args,
            &format!("node-{n}-tailscaled"),
        )?;
        if let Some(node) = self.state.nodes.get_mut(&n) {
            node.tailscaled_pid = Some(pid);
        }
        progress(format!(
            "node-{n}: tailscaled stand-in on tailscale0, pid {pid}"
        ));
        self.save()
    }

    /// Waits until node N's tailscaled stand-in reports `Running` on its LocalAPI.
    pub fn wait_tailnet(&self, n: u32, timeout: Duration) -> Result<()> {
        wait_for(
            timeout,
            &format!("node-{n}'s tailscaled to be Running"),
            || {
                self.node_ctx(n).run(|| {
                    block_on(async {
                        let c = headcni_headscale::LocalApiClient::new(
                            "/run/tailscale/tailscaled.sock",
                        );
                        Ok(c.status_without_peers()
                            .await
                            .is_ok_and(|s| s.backend_state == "Running"))
                    })
                })?
            },
        )
    }

    /// Starts node N's `headcni daemon` (the real one) with its lab configuration.
    pub fn start_daemon(&mut self, n: u32) -> Result<()> {
        if let Some((img, pod)) = self.image_node(n)? {
            let pid = img.run_daemon(&pod)?;
            if let Some(node) = self.state.nodes.get_mut(&n) {
                node.daemon_pid = Some(pid);
            }
            progress(format!("node-{n}: headcni daemon container, pid {pid}"));
            return self.save();
        }
        let args = vec![
            "daemon".to_string(),
            format!("--config={}", self.daemon_config(n).display()),
        ];
        let pid = self.spawn_logged(
            &self.node_ctx(n),
            &self.bin("headcni"),
            &args,
            &format!("node-{n}-daemon"),
        )?;
        if let Some(node) = self.state.nodes.get_mut(&n) {
            node.daemon_pid = Some(pid);
        }
        progress(format!(
            "node-{n}: headcni daemon ({:?} mode), pid {pid}",
            self.state.spec.mode
        ));
        self.save()
    }

    /// Stops node N's daemon (SIGTERM, as a DaemonSet rollout does).
    pub fn stop_daemon(&mut self, n: u32) -> Result<()> {
        let pid = self
            .state
            .nodes
            .get_mut(&n)
            .and_then(|x| x.daemon_pid.take());
        if let Some((img, pod)) = self.image_node(n)? {
            img.stop_daemon(&pod)?;
        } else if let Some(pid) = pid {
            ns::terminate(&[pid], Duration::from_secs(5));
        }
        self.save()
    }

    /// An HTTP GET to node N's daemon (`127.0.0.1:8081` in the node): (status, body).
    pub fn daemon_get(&self, n: u32, path: &str) -> Result<(u16, String)> {
        let path = path.to_string();
        self.node_ctx(n)
            .run(move || http_get(SocketAddr::from(([127, 0, 0, 1], 8081)), &path))?
    }

    /// Node N's daemon `/status` as JSON.
    pub fn daemon_status(&self, n: u32) -> Result<Value> {
        let (code, body) = self.daemon_get(n, "/status")?;
        if code != 200 {
            bail!("node-{n} /status answered {code}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// True when node N's daemon answers `/readyz` with 200.
    pub fn daemon_ready(&self, n: u32) -> bool {
        matches!(self.daemon_get(n, "/readyz"), Ok((200, _)))
    }

    /// Waits until node N's daemon is ready and its conflist exists.
    pub fn wait_ready(&self, n: u32, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        wait_for(timeout, &format!("node-{n}'s daemon to be ready"), || {
            Ok(self.daemon_ready(n) && self.conflist(n).is_ok())
        })
        .with_context(|| format!("see {}", self.shared().join("logs").display()))?;
        Ok(t.elapsed())
    }

    /// The conflist node N's daemon wrote (read inside the node).
    pub fn conflist(&self, n: u32) -> Result<Value> {
        let path = self.conf_dir()?.join("10-headcni.conflist");
        let bytes = self.node_ctx(n).run(move || std::fs::read(path))??;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// CNI STATUS of node N's `headcni` plugin, run as containerd ≥ 2.1 runs it (see
    /// [`chain::status`]) with the node's conflist, in the node; `None` when libcni would not
    /// run STATUS for this conflist (its version is below 1.1.0).
    pub fn cni_status(&self, n: u32) -> Result<Option<chain::Exec>> {
        let list = self.conflist(n)?;
        Ok(chain::status(
            &self.node_ctx(n),
            &self.cni_path()?,
            &list,
            "headcni",
        )?)
    }

    /// Adds the next pod on node N through CNI ADD of the daemon's conflist.
    pub fn add_pod(&mut self, n: u32) -> Result<Pod> {
        self.add_pod_with(n, json!({}))
    }

    /// Like [`Lab::add_pod`] with runtime capabilities (`portMappings`, ...).
    pub fn add_pod_with(&mut self, n: u32, runtime_config: Value) -> Result<Pod> {
        let m = (1..)
            .find(|m| {
                !self
                    .state
                    .pods
                    .iter()
                    .any(|p| p.name == format!("pod-{n}-{m}"))
            })
            .unwrap_or(1);
        let name = format!("pod-{n}-{m}");
        let ctx = self.node_ctx(n);
        let pod_name = name.clone();
        ctx.run(move || -> Result<()> {
            let path = create_named(&pod_name).map_err(|e| anyhow!("{pod_name} netns: {e}"))?;
            block_on(async move {
                Rtnl::for_netns(&path)?.set_link_up("lo", None).await?;
                anyhow::Ok(())
            })
        })??;
        let mut pod = Pod {
            name: name.clone(),
            node: n,
            container_id: format!("{}-{name}", self.state.spec.name),
            ip: None,
            ip6: None,
            result: Value::Null,
        };
        let list = self.conflist(n)?;
        let att = self.attachment(&pod, runtime_config);
        match chain::add(&ctx, &self.cni_path()?, &list, &att) {
            Ok(result) => {
                pod.ip = chain::first_ipv4(&result);
                pod.ip6 = chain::first_ipv6(&result);
                pod.result = result;
            }
            Err(e) => {
                let _ = ctx.run(move || delete_named(&name));
                return Err(anyhow!("CNI ADD {}: {e}", pod.name));
            }
        }
        self.state.pods.push(pod.clone());
        self.save()?;
        Ok(pod)
    }

    fn attachment(&self, pod: &Pod, runtime_config: Value) -> chain::Attachment {
        chain::Attachment {
            container_id: pod.container_id.clone(),
            netns: pod.netns(),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={}",
                pod.name
            ),
            runtime_config,
        }
    }

    /// CNI DEL of a pod through its node's conflist, then removes its netns.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let pod = self
            .pod(name)
            .cloned()
            .ok_or_else(|| anyhow!("no pod {name}"))?;
        let ctx = self.node_ctx(pod.node);
        let list = self.conflist(pod.node)?;
        let att = self.attachment(&pod, json!({}));
        chain::del(&ctx, &self.cni_path()?, &list, &att, Some(&pod.result))
            .map_err(|e| anyhow!("CNI DEL {name}: {e}"))?;
        let n = pod.name.clone();
        ctx.run(move || delete_named(&n))?
            .map_err(|e| anyhow!("{e}"))?;
        self.state.pods.retain(|p| p.name != name);
        self.save()
    }

    /// Removes node N from the cluster as an operator would: `headcni uninstall` (withdraws
    /// its route), the node deleted from Headscale, its processes stopped, its namespaces
    /// removed. Other nodes' routes and pods are not touched.
    pub fn remove_node(&mut self, n: u32) -> Result<()> {
        let node_id = self.tailnet_node_id(n).ok();
        // The daemon first, or its reconcile would advertise the route again.
        self.stop_daemon(n)?;
        let ctx = self.node_ctx(n);
        if let Some((img, pod)) = self.image_node(n)? {
            img.uninstall(&pod)
                .with_context(|| format!("node-{n}: headcni uninstall"))?;
            img.remove_all();
        } else {
            let (mut cmd, fds) = ctx.command(self.bin("headcni"), false)?;
            let out = cmd
                .arg("uninstall")
                .arg(format!("--config={}", self.daemon_config(n).display()))
                .output()?;
            drop(fds);
            if !out.status.success() {
                bail!(
                    "node-{n}: headcni uninstall failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let ids = self.node_ns_inodes(n);
        ns::terminate(&ns::processes_in(&ids.0, &ids.1), Duration::from_secs(5));
        if let Some(id) = node_id {
            self.headscale_delete_node(id)?;
        }
        ns::unpin(&ctx.mnt.clone().unwrap_or_default())?;
        self.delete_hub_link(n)?;
        delete_named(&self.ns_name(&format!("node-{n}"))).map_err(|e| anyhow!("{e}"))?;
        self.state.pods.retain(|p| p.node != n);
        self.state.nodes.remove(&n);
        self.save()
    }

    fn node_ns_inodes(&self, n: u32) -> (Vec<u64>, Vec<u64>) {
        let ctx = self.node_ctx(n);
        let net = ns::ns_inode(&ctx.net).into_iter().collect();
        let mnt = ctx
            .mnt
            .as_deref()
            .and_then(ns::ns_inode)
            .into_iter()
            .collect();
        (net, mnt)
    }

    /// Node N's Headscale node id, from its daemon's `/status`.
    pub fn tailnet_node_id(&self, n: u32) -> Result<u64> {
        let st = self.daemon_status(n)?;
        st["control"]["node_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| anyhow!("node-{n}'s /status has no node id: {st}"))
    }

    /// An authenticated REST call to the Headscale stand-in (from the hub): (status, body).
    pub fn headscale_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let key = std::fs::read_to_string(self.shared().join("api-key"))?
            .trim()
            .to_string();
        let method = method.to_string();
        let path = path.to_string();
        let body = body.map(Value::to_string);
        self.hub_ctx().run(move || -> Result<(u16, Value)> {
            let (code, text) = http_request(
                SocketAddr::from((HEADSCALE_ADDR, HEADSCALE_PORT)),
                &method,
                &path,
                Some(&key),
                body.as_deref(),
            )?;
            Ok((
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        })?
    }

    fn headscale_delete_node(&self, id: u64) -> Result<()> {
        let (code, body) = self.headscale_api("DELETE", &format!("/api/v1/node/{id}"), None)?;
        if code != 200 {
            bail!("DELETE node {id}: {code} {body}");
        }
        Ok(())
    }

    /// ICMP echo from a pod to `dst` (raw socket inside the pod's netns).
    pub fn ping_from(&self, pod: &Pod, dst: IpAddr, timeout: Duration) -> Result<bool> {
        Ok(self
            .pod_ctx(pod)
            .run(move || headcni_testkit::icmp::ping(dst, timeout))??)
    }

    /// Waits until every pod answers every other pod's ping ([`Lab::wait_pairs`]: each
    /// round asks only the pairs that have not answered yet).
    pub fn wait_full_mesh(&self, timeout: Duration) -> Result<()> {
        self.wait_pairs(timeout)
    }

    /// Pings between every ordered pair of pods: (from, to, answered).
    pub fn reachability(&self) -> Result<Vec<(String, String, bool)>> {
        let mut out = Vec::new();
        for a in &self.state.pods {
            for b in &self.state.pods {
                if a.name == b.name {
                    continue;
                }
                let mut ok = match b.ip {
                    Some(ip) => self.ping_from(a, IpAddr::V4(ip), Duration::from_millis(500))?,
                    None => false,
                };
                // A dual-stack lab: IPv6 too.
                if ok && self.state.spec.dual_stack {
                    ok = match b.ip6 {
                        Some(ip) => {
                            self.ping_from(a, IpAddr::V6(ip), Duration::from_millis(500))?
                        }
                        None => false,
                    };
                }
                out.push((a.name.clone(), b.name.clone(), ok));
            }
        }
        Ok(out)
    }

    /// `command` run inside a target: `node-N`, `pod-N-M`, `hub` or `inet`. The returned guard
    /// must live until the command is spawned.
    pub fn command(
        &self,
        target: &str,
        program: &str,
    ) -> Result<(std::process::Command, ns::CtxFds)> {
        let ctx = self.target_ctx(target)?;
        Ok(ctx.command(program, false)?)
    }

    /// The context of a target name.
    pub fn target_ctx(&self, target: &str) -> Result<Ctx> {
        if target == "hub" {
            return Ok(self.hub_ctx());
        }
        if target == "inet" {
            return Ok(self.inet_ctx());
        }
        if let Some(n) = target
            .strip_prefix("node-")
            .and_then(|s| s.parse::<u32>().ok())
            && self.state.nodes.contains_key(&n)
        {
            return Ok(self.node_ctx(n));
        }
        if let Some(p) = self.pod(target) {
            return Ok(self.pod_ctx(p));
        }
        bail!("no target {target:?} (node-N, pod-N-M, hub or inet)")
    }

    /// The human summary `lab up` and `lab status` print: nodes, then pods with reachability.
    pub fn report(&self) -> Result<String> {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<8} {:<16} {:<14} {:<16} {:<6} {:<26} {}\n",
            "NODE", "UNDERLAY", "TAILNET", "PODCIDR", "READY", "RSS MiB (daemon/ts/wg)", "ROUTE"
        ));
        let hs_nodes = self
            .headscale_api("GET", "/api/v1/node", None)
            .ok()
            .and_then(|(c, v)| (c == 200).then_some(v))
            .and_then(|v| v["nodes"].as_array().cloned())
            .unwrap_or_default();
        let routes_025 = match self.state.spec.api {
            Api::V0_25 => self
                .headscale_api("GET", "/api/v1/routes", None)
                .ok()
                .and_then(|(_, v)| v["routes"].as_array().cloned())
                .unwrap_or_default(),
            Api::V0_29 => Vec::new(),
        };
        for (n, node) in &self.state.nodes {
            let ready = self.daemon_ready(*n);
            let hs = hs_nodes.iter().find(|h| h["name"] == node.name.as_str());
            let tailnet = hs
                .and_then(|h| h["ipAddresses"].as_array())
                .and_then(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .find(|a| !a.contains(':'))
                })
                .unwrap_or("-")
                .to_string();
            let cidrs: Vec<String> = node.pod_cidrs().iter().map(|c| c.to_string()).collect();
            let cidr = cidrs.join(",");
            let approved = cidrs.iter().all(|cidr| {
                hs.is_some_and(|h| {
                    h["approvedRoutes"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|r| r == cidr.as_str()))
                }) || routes_025.iter().any(|r| {
                    r["prefix"] == cidr.as_str()
                        && r["enabled"] == true
                        && r["node"]["name"] == node.name.as_str()
                })
            });
            let mem = self.node_memory(*n);
            let mib = |k: u64| k as f64 / 1024.0;
            s.push_str(&format!(
                "{:<8} {:<16} {:<14} {:<16} {:<6} {:<26} {}\n",
                node.name,
                node.underlay.to_string(),
                tailnet,
                cidr,
                if ready { "yes" } else { "no" },
                format!(
                    "{:.1} ({:.1}/{:.1}/{:.1})",
                    mib(mem.total_kib()),
                    mib(mem.daemon_kib),
                    mib(mem.tailscaled_kib),
                    mib(mem.wireguard_kib)
                ),
                if approved { "approved" } else { "not approved" },
            ));
        }
        s.push('\n');
        let reach = self.reachability()?;
        let total = self.state.pods.len().saturating_sub(1);
        s.push_str(&format!(
            "{:<10} {:<8} {:<14} {:<10} {}\n",
            "POD", "NODE", "IP", "PODS", "INTERNET"
        ));
        for p in &self.state.pods {
            let ok = reach
                .iter()
                .filter(|(a, _, ok)| *a == p.name && *ok)
                .count();
            let mut inet = self
                .ping_from(p, IpAddr::V4(INET_ADDR), Duration::from_millis(500))
                .unwrap_or(false);
            if inet && self.state.spec.dual_stack {
                inet = self
                    .ping_from(
                        p,
                        IpAddr::V6(dual_stack::INET_ADDR_V6),
                        Duration::from_millis(500),
                    )
                    .unwrap_or(false);
            }
            let mut ips = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            if let Some(v6) = p.ip6 {
                ips.push_str(&format!(",{v6}"));
            }
            s.push_str(&format!(
                "{:<10} {:<8} {:<14} {:<10} {}\n",
                p.name,
                format!("node-{}", p.node),
                ips,
                format!("{ok}/{total}"),
                if inet { "ok" } else { "no" }
            ));
        }
        Ok(s)
    }

    /// Removes lab `name` completely: CNI DEL of its pods (best effort), every process in its
    /// namespaces, the namespaces, the pinned mount namespaces and `/run/headcni-lab/<name>`.
    /// Works without a state file (after a crash) by finding namespaces by name.
    pub fn down(name: &str) -> Result<DownReport> {
        let mut report = DownReport::default();
        if let Ok(mut lab) = Lab::load(name) {
            let pods: Vec<String> = lab.state.pods.iter().map(|p| p.name.clone()).collect();
            for p in pods {
                if lab.del_pod(&p).is_ok() {
                    report.pods_deleted += 1;
                }
            }
            let nodes: Vec<u32> = lab.state.nodes.keys().copied().collect();
            for n in nodes {
                if let Ok(Some((img, _))) = lab.image_node(n) {
                    img.remove_all();
                }
            }
        }
        let prefix = format!("{name}-");
        let netns_names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        let ns_dir = Self::root(name).join("ns");
        let mnt_files: Vec<PathBuf> = std::fs::read_dir(&ns_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let net_inodes: Vec<u64> = netns_names
            .iter()
            .filter_map(|n| ns::ns_inode(Path::new(&format!("/run/netns/{n}"))))
            .collect();
        let mnt_inodes: Vec<u64> = mnt_files.iter().filter_map(|p| ns::ns_inode(p)).collect();
        let pids = ns::processes_in(&net_inodes, &mnt_inodes);
        report.processes_stopped = pids.len();
        ns::terminate(&pids, Duration::from_secs(5));
        for p in &mnt_files {
            ns::unpin(p)?;
        }
        for n in &netns_names {
            delete_named(n).map_err(|e| anyhow!("{e}"))?;
            report.namespaces_removed += 1;
        }
        let _ = nix::mount::umount2(&ns_dir, nix::mount::MntFlags::MNT_DETACH);
        match std::fs::remove_dir_all(Self::root(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("removing the lab directory"),
        }
        if Path::new(RUN_ROOT)
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none())
        {
            let _ = std::fs::remove_dir(RUN_ROOT);
        }
        Ok(report)
    }
}

/// What [`Lab::down`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DownReport {
    /// Pods deleted through CNI DEL.
    pub pods_deleted: usize,
    /// Processes stopped.
    pub processes_stopped: usize,
    /// Network namespaces removed.
    pub namespaces_removed: usize,
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Runs a future on a fresh current-thread runtime (the lab's netlink work is short).
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.1 request to `addr` (headcni-testkit's probe: hyper's client), made from the
/// calling thread's network namespace; returns (status, body). For the lab's own probes of
/// the daemon and the Headscale stand-in. Bounded: 2 s to connect, 10 s in all.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    // Kept apart by the stand-ins' request counters (`bench/scale.sh` counts the daemons').
    let mut headers = vec![("user-agent", crate::request_stats::LAB_USER_AGENT)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let r = headcni_testkit::http::request(addr, method, path, &headers, body)?;
    Ok((r.status, r.body))
}

/// `GET path` without authentication.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, None, None)
}
