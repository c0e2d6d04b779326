//! containerd 1.6 (Debian bookworm) with its CRI plugin runs pods on the HeadCNI network,
//! driven through the CRI gRPC API as kubelet drives it (the `k8s-cri` bindings over tonic on
//! the unix socket). A private containerd (own root, state, socket; CNI `bin_dir`/`conf_dir`
//! of the test; `restrict_oom_score_adj`; locally imported images, native snapshotter) runs
//! inside the test's node netns and private mount namespace (see `runtimes/mod.rs`).
//!
//! Asserted: RunPodSandbox with a hostPort and the bandwidth annotations → PodSandboxStatus's
//! IP is inside the PodCIDR and is the IPAM reservation of the sandbox; a busybox httpd
//! container in the pod answers from the node netns, directly and through the hostPort
//! (chained portmap); the bandwidth plugin's tbf qdisc is on the host veth; what containerd
//! sends (CNI_ARGS keys, Go-cased capability objects); a containerd restart (SIGKILL, start
//! again) with the pod running keeps its one reservation and a new pod gets another address;
//! StopPodSandbox releases the address and removes the veth and portmap's rules;
//! RemovePodSandbox's DEL with an empty netns succeeds; nothing is left.

mod common;
mod runtimes;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use headcni_core::plugin::host_veth_name;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
};
use runtimes::{BUSYBOX_IMAGE, NODE_IP, Node, PAUSE_IMAGE};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const HOST_PORT: u16 = 18081;

/// A private containerd inside the node; killed on drop (the node's drop removes the rest).
struct Containerd<'a> {
    node: &'a Node,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
}

impl<'a> Containerd<'a> {
    fn new(node: &'a Node) -> Containerd<'a> {
        let dir = node.path("containerd");
        std::fs::create_dir_all(&dir).expect("mkdir containerd");
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{dir}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "native"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{bin}"
      conf_dir = "{netd}"
      max_conf_num = 1
"#,
            dir = dir.display(),
            bin = node.bin_dir().display(),
            netd = node.conf_dir().display(),
        );
        std::fs::write(dir.join("config.toml"), config).expect("write config.toml");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Containerd {
            node,
            child: None,
            rt,
        };
        c.start();
        c
    }

    fn socket(&self) -> PathBuf {
        self.node.path("containerd/containerd.sock")
    }

    /// Starts containerd and waits until CRI reports RuntimeReady and NetworkReady.
    fn start(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node.path("containerd/log"))
            .expect("open the containerd log");
        let child = self
            .node
            .cmd("containerd")
            .arg("--config")
            .arg(self.node.path("containerd/config.toml"))
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn containerd");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.rt.block_on(async {
                let mut c = RuntimeServiceClient::new(self.channel().await.ok()?);
                let st = c.status(StatusRequest { verbose: false }).await.ok()?;
                let conds = st.into_inner().status?.conditions;
                Some(conds.len() >= 2 && conds.iter().all(|c| c.status))
            });
            if ready == Some(true) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < end,
                "containerd not ready in 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs containerd (shims and pods keep running).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.node.path("containerd/log")).unwrap_or_default()
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let path = self.socket();
        Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
    }

    /// Runs `f` with a fresh runtime-service client.
    fn runtime<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        self.rt.block_on(async {
            let ch = self.channel().await.expect("connect to containerd");
            f(RuntimeServiceClient::new(ch)).await
        })
    }

    /// Imports the image archive (`ctr images import`) and waits until CRI sees both images.
    fn import_images(&self, archive: &std::path::Path) {
        let sock = self.socket().display().to_string();
        let archive = archive.display().to_string();
        self.node.run_ok(
            "ctr",
            &[
                "--address",
                &sock,
                "--namespace",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "native",
                &archive,
            ],
        );
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            let seen = common::eventually(Duration::from_secs(10), || {
                self.rt.block_on(async {
                    let Ok(ch) = self.channel().await else {
                        return false;
                    };
                    let req = ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.into(),
                            ..Default::default()
                        }),
                        verbose: false,
                    };
                    ImageServiceClient::new(ch)
                        .image_status(req)
                        .await
                        .is_ok_and(|r| r.into_inner().image.is_some())
                })
            });
            assert!(seen, "CRI does not see {image}");
        }
    }

    fn pod_config(&self, name: &str, host_port: Option<u16>) -> PodSandboxConfig {
        let log_dir = self.node.path(&format!("logs/{name}"));
        std::fs::create_dir_all(&log_dir).expect("mkdir pod logs");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            port_mappings: host_port
                .map(|p| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: i32::from(p),
                    host_ip: String::new(),
                })
                .into_iter()
                .collect(),
            annotations: HashMap::from([
                ("kubernetes.io/ingress-bandwidth".into(), "10M".into()),
                ("kubernetes.io/egress-bandwidth".into(), "20M".into()),
            ]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.node.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox; the sandbox ID.
    fn run_pod(&self, config: &PodSandboxConfig) -> String {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        self.runtime(|mut c| async move { c.run_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()))
            .into_inner()
            .pod_sandbox_id
    }

    /// CreateContainer + StartContainer of the busybox httpd in the sandbox.
    fn start_httpd(&self, pod: &str, config: &PodSandboxConfig) {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "httpd".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                log_path: "httpd.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        };
        let id = self
            .runtime(|mut c| async move { c.create_container(req).await })
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()))
            .into_inner()
            .container_id;
        let req = StartContainerRequest { container_id: id };
        self.runtime(|mut c| async move { c.start_container(req).await })
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log()));
    }

    /// PodSandboxStatus: (state, IP).
    fn pod_status(&self, pod: &str) -> (i32, String) {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let st = self
            .runtime(|mut c| async move { c.pod_sandbox_status(req).await })
            .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
            .into_inner()
            .status
            .expect("PodSandboxStatus has a status");
        let ip = st.network.map(|n| n.ip).unwrap_or_default();
        (st.state, ip)
    }

    fn stop_pod(&self, pod: &str) {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.runtime(|mut c| async move { c.stop_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.log()));
    }

    fn remove_pod(&self, pod: &str) {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.runtime(|mut c| async move { c.remove_pod_sandbox(req).await })
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.log()));
    }

    fn pod_count(&self) -> usize {
        self.runtime(|mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .len()
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("IP"), port)
}

#[test]
fn containerd_cri_runs_pods_on_headcni() {
    let started = Instant::now();
    let node = Node::new("ctd", 62);
    let mut ctd = Containerd::new(&node);
    let images = runtimes::build_image_archive(&node.path("image"));
    ctd.import_images(&images);
    let ready = started.elapsed();

    // RunPodSandbox with a hostPort and the bandwidth annotations, then the httpd container.
    let web_cfg = ctd.pod_config("web", Some(HOST_PORT));
    let web = ctd.run_pod(&web_cfg);
    let (state, ip) = ctd.pod_status(&web);
    assert_eq!(state, PodSandboxState::SandboxReady as i32);
    assert!(
        node.in_pod_cidr(&ip),
        "PodSandboxStatus IP {ip} not in {}",
        node.cidr
    );
    let reserved = node.reservations();
    assert_eq!(
        reserved,
        [(ip.clone(), format!("{web}\r\neth0"))].into(),
        "the store holds exactly the sandbox's reservation"
    );
    ctd.start_httpd(&web, &web_cfg);
    node.assert_serves(addr(&ip, 80), Duration::from_secs(10), "pod IP");
    node.assert_serves(addr(NODE_IP, HOST_PORT), Duration::from_secs(5), "hostPort");
    let veth = host_veth_name(&web, "eth0");
    let qdisc = node.ns.exec_ok(&["tc", "qdisc", "show", "dev", &veth]);
    assert!(qdisc.contains("tbf"), "bandwidth's tbf on {veth}: {qdisc}");

    // What containerd sent.
    let adds = node.calls_of("headcni", "ADD");
    assert_eq!(adds.len(), 1, "one ADD for one sandbox");
    let (env, conf) = &adds[0];
    assert_eq!(env["CNI_CONTAINERID"], web);
    assert!(env["CNI_NETNS"].contains("/netns/cni-"), "{env:?}");
    let args: Vec<&str> = env["CNI_ARGS"].split(';').collect();
    for kv in [
        "IgnoreUnknown=1".to_owned(),
        "K8S_POD_NAMESPACE=default".to_owned(),
        "K8S_POD_NAME=web".to_owned(),
        format!("K8S_POD_INFRA_CONTAINER_ID={web}"),
        "K8S_POD_UID=uid-web".to_owned(),
    ] {
        assert!(args.contains(&kv.as_str()), "CNI_ARGS lacks {kv}: {env:?}");
    }
    assert_eq!(conf["cniVersion"], node.conflist()["cniVersion"], "{conf}");
    let pm = node.calls_of("portmap", "ADD");
    let pm_conf = &pm.first().expect("portmap ADD recorded").1;
    let mapping = &pm_conf["runtimeConfig"]["portMappings"][0];
    assert_eq!(mapping["HostPort"], HOST_PORT, "Go-cased: {pm_conf}");
    assert_eq!(mapping["ContainerPort"], 80, "{pm_conf}");
    let bw = node.calls_of("bandwidth", "ADD");
    let bw_conf = &bw.first().expect("bandwidth ADD recorded").1;
    assert_eq!(
        bw_conf["runtimeConfig"]["bandwidth"]["IngressRate"], 10_000_000,
        "{bw_conf}"
    );
    assert_eq!(
        bw_conf["runtimeConfig"]["bandwidth"]["EgressRate"], 20_000_000,
        "{bw_conf}"
    );

    // containerd restart with the pod running: nothing lost, nothing duplicated.
    ctd.kill();
    ctd.start();
    assert_eq!(node.reservations(), reserved, "after the restart");
    assert_eq!(
        ctd.pod_status(&web),
        (PodSandboxState::SandboxReady as i32, ip.clone()),
        "the pod after the restart"
    );
    node.assert_serves(
        addr(&ip, 80),
        Duration::from_secs(5),
        "pod IP after restart",
    );
    assert_eq!(
        node.calls_of("headcni", "ADD").len(),
        1,
        "no ADD on restart"
    );
    assert!(
        node.calls_of("headcni", "DEL").is_empty(),
        "no DEL on restart"
    );
    let other_cfg = ctd.pod_config("other", None);
    let other = ctd.run_pod(&other_cfg);
    let (_, other_ip) = ctd.pod_status(&other);
    assert!(node.in_pod_cidr(&other_ip), "{other_ip}");
    assert_ne!(other_ip, ip, "a new pod gets another address");
    assert_eq!(node.reservations().len(), 2, "{:?}", node.reservations());
    ctd.stop_pod(&other);
    ctd.remove_pod(&other);
    assert_eq!(
        node.reservations(),
        reserved,
        "only the running pod is left"
    );

    // StopPodSandbox: DEL with the netns and prevResult releases everything.
    ctd.stop_pod(&web);
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    assert!(!node.has_link(&veth), "{veth} left after StopPodSandbox");
    node.assert_no_pod_veths("after StopPodSandbox");
    let nat = node.nat_rules();
    assert!(!nat.contains(&web), "portmap rules left:\n{nat}");
    assert!(
        node.http_get(addr(NODE_IP, HOST_PORT)).is_err(),
        "the hostPort still answers"
    );
    let dels = node.calls_of("headcni", "DEL");
    let web_dels: Vec<_> = dels
        .iter()
        .filter(|(e, _)| e["CNI_CONTAINERID"] == web)
        .collect();
    let (first_env, first) = web_dels.first().expect("DEL of the web pod recorded");
    assert!(
        first_env["CNI_NETNS"].contains("/netns/cni-"),
        "{first_env:?}"
    );
    assert!(first.get("prevResult").is_some(), "first DEL: {first}");

    // RemovePodSandbox: a further DEL without netns must succeed; nothing left.
    ctd.remove_pod(&web);
    let dels = node.calls_of("headcni", "DEL");
    let empty_netns = dels
        .iter()
        .filter(|(e, _)| e["CNI_CONTAINERID"] == web && e["CNI_NETNS"].is_empty())
        .count();
    assert!(
        empty_netns >= 1,
        "RemovePodSandbox sent no DEL with an empty netns: {dels:?}"
    );
    assert_eq!(ctd.pod_count(), 0);
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    node.assert_no_pod_veths("after RemovePodSandbox");
    eprintln!(
        "containerd ready + images in {ready:?}; whole scenario {:?}",
        started.elapsed()
    );
}
