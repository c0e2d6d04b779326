//! The DaemonSet of `deploy/headcni.yaml` (the chart rendered with its default values: host
//! mode) or of `deploy/headcni-daemon-mode.yaml` (the chart in daemon mode), read as a kubelet
//! would: the daemon container and its init containers (command, args, env,
//! volume mounts, privileged, read-only root), the pod's volumes (`hostPath` directories and
//! files, the ConfigMap,
//! the Secret, `emptyDir`) and the ConfigMap's data. The lab's image mode
//! ([`super::image`]) runs each node's daemon from exactly these.
//!
//! Source of the field names: Kubernetes `core/v1` `PodSpec`, `Container`, `Volume`,
//! `VolumeMount`, `EnvVar` (`k8s.io/api/core/v1/types.go`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The manifest the lab's image mode follows, compiled in: the checked-in rendering of the
/// chart (scripts/check-chart.sh keeps it equal to `deploy/chart/headcni`'s rendering).
pub const DEPLOY_MANIFEST: &str = include_str!("../../../deploy/headcni.yaml");

/// The daemon-mode manifest, compiled in: the chart rendered with `mode: daemon` and
/// `daemonMode.tailscaledHostPath: /usr/local/sbin/tailscaled` (scripts/render-manifest.sh;
/// scripts/check-chart.sh keeps it equal to the rendering).
pub const DAEMON_MODE_MANIFEST: &str = include_str!("../../../deploy/headcni-daemon-mode.yaml");

/// Upper bound on the manifest text (a rendered chart is a few KiB).
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML, or over the size bound.
    #[error("manifest: {0}")]
    Yaml(String),
    /// A required object or field is missing or has the wrong shape.
    #[error("manifest: {0}")]
    Shape(String),
}

/// An environment variable of a container (`EnvVar`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// `value`.
    Value(String),
    /// `valueFrom.fieldRef.fieldPath` (the Downward API), e.g. `spec.nodeName`.
    FieldRef(String),
}

/// A `volumeMount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// `mountPath` in the container.
    pub path: String,
    /// `readOnly`.
    pub read_only: bool,
}

/// A container of the pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    /// `env`, in order.
    pub env: Vec<(String, EnvSource)>,
    /// `volumeMounts`, in order.
    pub mounts: Vec<Mount>,
    /// `securityContext.privileged`.
    pub privileged: bool,
    /// `securityContext.readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `securityContext.allowPrivilegeEscalation == false`.
    pub no_new_privileges: bool,
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// `hostPath.path` of a directory (`type` `DirectoryOrCreate`, `Directory` or unset).
    HostPath(String),
    /// `hostPath.path` with `type: File`: a file that must exist on the node (kubelet refuses
    /// to start the pod otherwise), e.g. daemon mode's tailscaled binary.
    HostFile(String),
    /// `configMap`: its name and the `items` (key, path in the volume).
    ConfigMap {
        /// `configMap.name`.
        name: String,
        /// `items`.
        items: Vec<(String, String)>,
    },
    /// `secret`: its name, `defaultMode` and the `items` (key, path in the volume).
    Secret {
        /// `secretName`.
        name: String,
        /// `defaultMode` (file permission bits).
        mode: u32,
        /// `items`.
        items: Vec<(String, String)>,
    },
    /// `emptyDir` (`medium: Memory` → a tmpfs), with its `sizeLimit` text.
    EmptyDir {
        /// `medium == "Memory"`.
        memory: bool,
        /// `sizeLimit`, e.g. `16Mi`.
        size_limit: Option<String>,
    },
}

/// The DaemonSet's pod as the lab needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSetPod {
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `initContainers`, in order.
    pub init: Vec<Container>,
    /// The first of `containers` (the daemon).
    pub daemon: Container,
    /// `volumes` by name.
    pub volumes: BTreeMap<String, Volume>,
    /// Every ConfigMap's `data`, by ConfigMap name.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl DaemonSetPod {
    /// Every `hostPath` the daemon or an init container mounts: (host path, volume name).
    pub fn host_paths(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for c in self.init.iter().chain(std::iter::once(&self.daemon)) {
            for m in &c.mounts {
                if let Some(Volume::HostPath(p)) = self.volumes.get(&m.volume)
                    && !out.iter().any(|(q, _)| q == p)
                {
                    out.push((p.clone(), m.volume.clone()));
                }
            }
        }
        out
    }

    /// Every `hostPath` file (`type: File`) the daemon container mounts: (host path, mount).
    pub fn host_files(&self) -> Vec<(String, &Mount)> {
        self.daemon
            .mounts
            .iter()
            .filter_map(|m| match self.volumes.get(&m.volume) {
                Some(Volume::HostFile(p)) => Some((p.clone(), m)),
                _ => None,
            })
            .collect()
    }

    /// Where the daemon container mounts the `hostPath` `host`, if it does.
    pub fn daemon_mount_of(&self, host: &str) -> Option<&Mount> {
        self.daemon
            .mounts
            .iter()
            .find(|m| matches!(self.volumes.get(&m.volume), Some(Volume::HostPath(p)) if p == host))
    }
}

fn shape(msg: impl Into<String>) -> ManifestError {
    ManifestError::Shape(msg.into())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn items(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some((i["key"].as_str()?.into(), i["path"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default()
}

fn container(c: &Value) -> Result<Container, ManifestError> {
    let name = c["name"]
        .as_str()
        .ok_or_else(|| shape("a container has no name"))?
        .to_string();
    let mut argv = strings(&c["command"]);
    argv.extend(strings(&c["args"]));
    if argv.is_empty() {
        return Err(shape(format!("container {name} has no command")));
    }
    let mut env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let n = e["name"]
            .as_str()
            .ok_or_else(|| shape(format!("container {name}: an env entry has no name")))?;
        let src = if let Some(v) = e["value"].as_str() {
            EnvSource::Value(v.into())
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            EnvSource::FieldRef(f.into())
        } else {
            return Err(shape(format!(
                "container {name}: env {n} is neither a value nor a fieldRef"
            )));
        };
        env.push((n.to_string(), src));
    }
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        mounts.push(Mount {
            volume: m["name"]
                .as_str()
                .ok_or_else(|| shape(format!("container {name}: a volumeMount has no name")))?
                .into(),
            path: m["mountPath"]
                .as_str()
                .ok_or_else(|| shape(format!("container {name}: a volumeMount has no path")))?
                .into(),
            read_only: m["readOnly"].as_bool().unwrap_or(false),
        });
    }
    let sc = &c["securityContext"];
    Ok(Container {
        name,
        argv,
        env,
        mounts,
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        no_new_privileges: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
    })
}

fn volume(v: &Value) -> Result<Volume, ManifestError> {
    let name = v["name"].as_str().unwrap_or("?");
    if let Some(p) = v["hostPath"]["path"].as_str() {
        return match v["hostPath"]["type"].as_str() {
            Some("File") => Ok(Volume::HostFile(p.into())),
            None | Some("" | "Directory" | "DirectoryOrCreate") => Ok(Volume::HostPath(p.into())),
            Some(t) => Err(shape(format!(
                "volume {name}: hostPath type {t} is not modelled"
            ))),
        };
    }
    if let Some(n) = v["configMap"]["name"].as_str() {
        return Ok(Volume::ConfigMap {
            name: n.into(),
            items: items(&v["configMap"]["items"]),
        });
    }
    if let Some(n) = v["secret"]["secretName"].as_str() {
        // Kubernetes' default for a Secret volume: 0644.
        let mode = v["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
        return Ok(Volume::Secret {
            name: n.into(),
            mode: u32::try_from(mode & 0o777).unwrap_or(0o644),
            items: items(&v["secret"]["items"]),
        });
    }
    if v.get("emptyDir").is_some() {
        return Ok(Volume::EmptyDir {
            memory: v["emptyDir"]["medium"].as_str() == Some("Memory"),
            size_limit: v["emptyDir"]["sizeLimit"].as_str().map(String::from),
        });
    }
    Err(shape(format!(
        "volume {name}: a kind the lab does not model"
    )))
}

/// Parses a multi-document manifest and returns its (single) DaemonSet's pod and the
/// ConfigMaps' data.
///
/// # Errors
/// [`ManifestError::Yaml`] when the text is not YAML or over 1 MiB;
/// [`ManifestError::Shape`] when there is no DaemonSet, it has no container, or a container,
/// volume or mount lacks a required field.
pub fn parse(text: &str) -> Result<DaemonSetPod, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::Yaml("over 1 MiB".into()));
    }
    let mut daemonset = None;
    let mut config_maps = BTreeMap::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let y = serde_norway::Value::deserialize(doc)
            .map_err(|e| ManifestError::Yaml(e.to_string()))?;
        if y.is_null() {
            continue;
        }
        let v = serde_json::to_value(&y).map_err(|e| ManifestError::Yaml(e.to_string()))?;
        match v["kind"].as_str() {
            Some("DaemonSet") if daemonset.is_none() => daemonset = Some(v),
            Some("ConfigMap") => {
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let data = v["data"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, s)| Some((k.clone(), s.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                config_maps.insert(name, data);
            }
            _ => {}
        }
    }
    let ds = daemonset.ok_or_else(|| shape("no DaemonSet"))?;
    let pod = &ds["spec"]["template"]["spec"];
    let daemon = container(
        pod["containers"]
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| shape("the DaemonSet has no container"))?,
    )?;
    let init = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(container)
        .collect::<Result<_, _>>()?;
    let mut volumes = BTreeMap::new();
    for v in pod["volumes"].as_array().into_iter().flatten() {
        let name = v["name"]
            .as_str()
            .ok_or_else(|| shape("a volume has no name"))?;
        volumes.insert(name.to_string(), volume(v)?);
    }
    for c in std::iter::once(&daemon).chain(&init) {
        if let Some(m) = c.mounts.iter().find(|m| !volumes.contains_key(&m.volume)) {
            return Err(shape(format!(
                "container {} mounts an undeclared volume {}",
                c.name, m.volume
            )));
        }
    }
    Ok(DaemonSetPod {
        host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
        init,
        daemon,
        volumes,
        config_maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_manifest_parses_with_its_host_mounts_config_and_secret() {
        let pod = parse(DEPLOY_MANIFEST).expect("deploy/headcni.yaml");
        assert!(pod.host_network);
        assert!(pod.daemon.privileged);
        assert_eq!(pod.daemon.argv[..2], ["/usr/local/bin/headcni", "daemon"]);
        assert!(pod.daemon.env.contains(&(
            "NODE_NAME".into(),
            EnvSource::FieldRef("spec.nodeName".into())
        )));
        let hosts: Vec<String> = pod.host_paths().into_iter().map(|(p, _)| p).collect();
        for p in [
            "/etc/cni/net.d",
            "/opt/cni/bin",
            "/var/lib/cni",
            "/run/headcni",
        ] {
            assert!(hosts.contains(&p.to_string()), "{p} not in {hosts:?}");
        }
        assert!(pod.volumes.values().any(|v| matches!(
            v,
            Volume::Secret { mode: 0o400, items, .. } if items == &[("api-key".to_string(), "api-key".to_string())]
        )));
        let cm = pod.config_maps.values().next().expect("a ConfigMap");
        assert!(cm["config.toml"].contains("[cni]"));
        assert_eq!(pod.init.len(), 1);
        assert!(pod.init[0].argv.iter().any(|a| a == "install"));
    }

    #[test]
    fn the_daemon_mode_manifest_mounts_the_nodes_tailscaled_binary() {
        let pod = parse(DAEMON_MODE_MANIFEST).expect("deploy/headcni-daemon-mode.yaml");
        let files = pod.host_files();
        assert_eq!(files.len(), 1, "{files:?}");
        let (host, mount) = &files[0];
        assert_eq!(host, "/usr/local/sbin/tailscaled");
        assert_eq!(mount.path, "/usr/local/sbin/tailscaled");
        assert!(mount.read_only);
        // A file, never a directory the lab would make.
        assert!(!pod.host_paths().iter().any(|(p, _)| p == host));
        let cfg = &pod.config_maps.values().next().expect("a ConfigMap")["config.toml"];
        assert!(cfg.contains("mode = \"daemon\""), "{cfg}");
        assert!(
            cfg.contains("tailscaled_path = \"/usr/local/sbin/tailscaled\""),
            "{cfg}"
        );
        // Its LocalAPI socket and state live in the pod's hostPaths.
        let hosts: Vec<String> = pod.host_paths().into_iter().map(|(p, _)| p).collect();
        assert!(hosts.contains(&"/run/headcni".to_string()), "{hosts:?}");
        assert!(hosts.contains(&"/var/lib/headcni".to_string()), "{hosts:?}");
    }

    #[test]
    fn an_unmodelled_host_path_type_is_refused() {
        let bad = "kind: DaemonSet\nspec:\n  template:\n    spec:\n      containers:\n        - name: d\n          command: [x]\n      volumes: [{name: s, hostPath: {path: /run/x.sock, type: Socket}}]\n";
        assert!(matches!(parse(bad), Err(ManifestError::Shape(m)) if m.contains("Socket")));
    }

    #[test]
    fn no_daemonset_or_an_undeclared_volume_is_refused() {
        assert!(matches!(
            parse("kind: ConfigMap\nmetadata: {name: x}\n"),
            Err(ManifestError::Shape(_))
        ));
        let bad = "kind: DaemonSet\nspec:\n  template:\n    spec:\n      containers:\n        - name: d\n          command: [x]\n          volumeMounts: [{name: nope, mountPath: /x}]\n";
        assert!(matches!(parse(bad), Err(ManifestError::Shape(m)) if m.contains("nope")));
        assert!(matches!(parse("a: [\n"), Err(ManifestError::Yaml(_))));
    }
}
