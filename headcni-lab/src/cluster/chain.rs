//! Runs a conflist the way libcni does (CNI spec 1.1.0 §"Network configuration lists",
//! §"Execution of Network Configurations"): ADD runs the plugins in order, each getting the
//! previous result as `prevResult`; DEL runs them in reverse with the cached ADD result;
//! `runtimeConfig` carries only the capabilities a plugin declares.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value, json};

use super::ns::Ctx;

/// One plugin exec's outcome.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Plugin `type`.
    pub plugin: String,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Stdout parsed as JSON, if it was JSON.
    pub stdout: Option<Value>,
    /// Stderr, lossily decoded.
    pub stderr: String,
}

/// A chain failure: which plugin, and what it answered.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The conflist has no `plugins` array or a plugin lacks `type`.
    #[error("invalid conflist: {0}")]
    Conflist(String),
    /// The plugin could not be started.
    #[error("exec {plugin}: {source}")]
    Spawn {
        /// Plugin type.
        plugin: String,
        /// The error.
        source: std::io::Error,
    },
    /// The plugin exited non-zero (its CNI error JSON is in `exec.stdout`).
    #[error("{} failed with exit code {}: {}", .0.plugin, .0.code, describe(.0))]
    Plugin(Box<Exec>),
}

fn describe(e: &Exec) -> String {
    e.stdout
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| e.stderr.trim().to_string())
}

/// What identifies an attachment (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`).
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Container id.
    pub container_id: String,
    /// Netns path as the plugin sees it (inside the node's mount namespace); empty for a DEL
    /// after the netns is gone.
    pub netns: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Runtime capabilities (`portMappings`, `bandwidth`, ...).
    pub runtime_config: Value,
}

fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>, rc: &Value) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    conf.insert("name".into(), list["name"].clone());
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        let mut runtime = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = rc.get(cap)
            {
                runtime.insert(cap.clone(), v.clone());
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    Value::Object(conf)
}

/// The first `CNI_PATH` directory holding `ty`, looked up inside `ctx` (the node's mount
/// namespace: in image mode the plugin exists only in the node's CNI bin dir).
fn find_plugin(ctx: &Ctx, cni_path: &[PathBuf], ty: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = cni_path.iter().map(|d| d.join(ty)).collect();
    match ctx.mnt {
        Some(_) => ctx
            .run(move || candidates.into_iter().find(|p| p.is_file()))
            .ok()
            .flatten(),
        None => candidates.into_iter().find(|p| p.is_file()),
    }
}

fn exec_one(
    ctx: &Ctx,
    cni_path: &[PathBuf],
    command: &str,
    att: &Attachment,
    conf: &Value,
) -> Result<Exec, ChainError> {
    let ty = conf["type"].as_str().unwrap_or_default();
    let exec = run_plugin(
        ctx,
        cni_path,
        ty,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &att.container_id),
            ("CNI_NETNS", &att.netns),
            ("CNI_IFNAME", &att.ifname),
            ("CNI_ARGS", &att.args),
        ],
        conf,
    )?;
    if exec.code != 0 {
        return Err(ChainError::Plugin(Box::new(exec)));
    }
    Ok(exec)
}

/// Runs plugin `ty` (looked up in `cni_path` inside `ctx`) with a clean environment: `PATH`,
/// `cni_env` and `CNI_PATH`; `conf` on stdin. Returns its outcome whatever the exit code.
fn run_plugin(
    ctx: &Ctx,
    cni_path: &[PathBuf],
    ty: &str,
    cni_env: &[(&str, &str)],
    conf: &Value,
) -> Result<Exec, ChainError> {
    let spawn_err = |source| ChainError::Spawn {
        plugin: ty.to_string(),
        source,
    };
    let bin = find_plugin(ctx, cni_path, ty).ok_or_else(|| {
        spawn_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not in CNI_PATH",
        ))
    })?;
    let (mut cmd, fds) = ctx.command(&bin, false).map_err(spawn_err)?;
    let path = std::env::join_paths(cni_path).map_err(|e| spawn_err(std::io::Error::other(e)))?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(cni_env.iter().copied())
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    drop(fds);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(Exec {
        plugin: ty.to_string(),
        code: out.status.code().unwrap_or(-1),
        stdout: serde_json::from_slice(&out.stdout).ok(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn plugins(list: &Value) -> Result<&Vec<Value>, ChainError> {
    let plugins = list["plugins"]
        .as_array()
        .ok_or_else(|| ChainError::Conflist("no plugins array".into()))?;
    if plugins.iter().any(|p| p["type"].as_str().is_none()) {
        return Err(ChainError::Conflist("a plugin has no type".into()));
    }
    Ok(plugins)
}

/// CNI ADD of the whole conflist inside `ctx` (the node); returns the last plugin's result.
/// On failure, DEL of the whole chain is run (as libcni's callers do) and the error returned.
pub fn add(
    ctx: &Ctx,
    cni_path: &[PathBuf],
    list: &Value,
    att: &Attachment,
) -> Result<Value, ChainError> {
    let mut prev: Option<Value> = None;
    for p in plugins(list)? {
        let conf = plugin_conf(list, p, prev.as_ref(), &att.runtime_config);
        match exec_one(ctx, cni_path, "ADD", att, &conf) {
            Ok(e) => prev = e.stdout,
            Err(e) => {
                let _ = del(ctx, cni_path, list, att, None);
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| ChainError::Conflist("the chain returned no result".into()))
}

/// CNI DEL of the whole conflist (reverse order) with `prev` as `prevResult` when known.
pub fn del(
    ctx: &Ctx,
    cni_path: &[PathBuf],
    list: &Value,
    att: &Attachment,
    prev: Option<&Value>,
) -> Result<(), ChainError> {
    let mut first_err = None;
    for p in plugins(list)?.iter().rev() {
        let conf = plugin_conf(list, p, prev, &att.runtime_config);
        if let Err(e) = exec_one(ctx, cni_path, "DEL", att, &conf) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The highest CNI version libcni supports (libcni v1.2/v1.3 `pkg/version`).
pub const LIBCNI_MAX_VERSION: (u64, u64, u64) = (1, 1, 0);

fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// The version a libcni ≥ 1.2 runtime runs a conflist at (containernetworking/cni
/// `libcni/conf.go` `NetworkConfFromBytes`/`ConfListFromBytes`): with `cniVersions`, the
/// highest listed version libcni supports ([`LIBCNI_MAX_VERSION`]); else `cniVersion`.
/// `None` when neither gives a version.
pub fn libcni_list_version(list: &Value) -> Option<String> {
    if let Some(listed) = list["cniVersions"].as_array() {
        return listed
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|v| semver(v).map(|s| (s, v)))
            .filter(|(s, _)| *s <= LIBCNI_MAX_VERSION)
            .max_by_key(|(s, _)| *s)
            .map(|(_, v)| v.to_string());
    }
    list["cniVersion"].as_str().map(str::to_string)
}

/// CNI STATUS (spec 1.1.0 §"STATUS: Check plugin status") of the conflist's plugin of type
/// `plugin`, inside `ctx` (the node), as a libcni ≥ 1.2 runtime (containerd ≥ 2.1) runs it:
/// first libcni's gate (`libcni/api.go` `GetStatusNetworkList`: a list whose version —
/// [`libcni_list_version`] — is below 1.1.0 gets no STATUS at all: `Ok(None)`, the runtime
/// takes the network as ready), then `CNI_COMMAND=STATUS` and `CNI_PATH` only, the plugin's
/// configuration with the list's `cniVersion` and `name` on stdin. Returns the exec's outcome
/// whatever its exit code (0: ready; 50/51 and the error JSON otherwise).
///
/// # Errors
/// [`ChainError::Conflist`] when the list has no such plugin, [`ChainError::Spawn`] when it
/// cannot be run.
pub fn status(
    ctx: &Ctx,
    cni_path: &[PathBuf],
    list: &Value,
    plugin: &str,
) -> Result<Option<Exec>, ChainError> {
    let version = libcni_list_version(list).unwrap_or_default();
    if semver(&version).is_none_or(|v| v < (1, 1, 0)) {
        return Ok(None);
    }
    let p = plugins(list)?
        .iter()
        .find(|p| p["type"] == plugin)
        .ok_or_else(|| ChainError::Conflist(format!("no plugin of type {plugin}")))?;
    let mut conf = plugin_conf(list, p, None, &json!({}));
    conf["cniVersion"] = json!(version);
    run_plugin(ctx, cni_path, plugin, &[("CNI_COMMAND", "STATUS")], &conf).map(Some)
}

/// The `CNI_PATH` the lab uses: the directory of the HeadCNI binaries, then Debian's reference
/// plugins (for chained `portmap`/`bandwidth`).
pub fn cni_path(bin_dir: &Path) -> Vec<PathBuf> {
    vec![bin_dir.to_path_buf(), PathBuf::from("/usr/lib/cni")]
}

/// The first IPv4 address (without prefix) of a CNI result's `ips`, if any.
pub fn first_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let net: ipnetwork::IpNetwork = ip["address"].as_str()?.parse().ok()?;
        match net {
            ipnetwork::IpNetwork::V4(v4) => Some(v4.ip()),
            ipnetwork::IpNetwork::V6(_) => None,
        }
    })
}

/// The first IPv6 address (without prefix) of a CNI result's `ips`, if any.
pub fn first_ipv6(result: &Value) -> Option<std::net::Ipv6Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let net: ipnetwork::IpNetwork = ip["address"].as_str()?.parse().ok()?;
        match net {
            ipnetwork::IpNetwork::V6(v6) => Some(v6.ip()),
            ipnetwork::IpNetwork::V4(_) => None,
        }
    })
}

/// An empty runtime config.
pub fn no_capabilities() -> Value {
    json!({})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcni_runs_a_list_at_its_highest_supported_listed_version() {
        let list =
            json!({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0", "1.1.0", "1.2.0"]});
        assert_eq!(libcni_list_version(&list).as_deref(), Some("1.1.0"));
        let list = json!({"cniVersion": "1.0.0", "cniVersions": ["0.3.1", "1.0.0"]});
        assert_eq!(libcni_list_version(&list).as_deref(), Some("1.0.0"));
        let list = json!({"cniVersion": "1.1.0"});
        assert_eq!(libcni_list_version(&list).as_deref(), Some("1.1.0"));
        assert_eq!(libcni_list_version(&json!({})), None);
    }

    #[test]
    fn status_below_1_1_0_is_skipped_as_libcni_does() {
        // No plugin is looked up or run: the gate comes first.
        let ctx = Ctx::net("/nonexistent");
        for list in [
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "headcni"}]}),
            json!({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0"], "name": "n", "plugins": [{"type": "headcni"}]}),
            json!({"name": "n", "plugins": [{"type": "headcni"}]}),
        ] {
            assert!(
                status(&ctx, &[], &list, "headcni").unwrap().is_none(),
                "{list}"
            );
        }
    }
}
