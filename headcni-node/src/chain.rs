//! What the conflist's chained plugins support: each is exec'd with `CNI_COMMAND=VERSION`
//! (CNI spec 1.1.0 §"VERSION"), the way libcni's `GetVersionInfo` asks (stdin
//! `{"cniVersion": "1.1.0"}`, `CNI_NETNS`/`CNI_IFNAME` set to `dummy` for plugins built on an
//! old skel), and the answers go to [`headcni_core::node::chain_versions::decide`].
//!
//! Plugin names are file names looked up in `[cni] bin_dir` only, never paths
//! ([`headcni_plugin::delegate::find_plugin`]: `validate_plugin_type`, an executable
//! regular file that does not resolve outside the directory). Each exec is bounded: at most
//! [`PROBE_TIMEOUT`], at most 1 MiB of output, killed with its process group past either
//! ([`headcni_plugin::delegate::exec`]). Answers are cached per binary (device, inode, size,
//! mtime), so a reconcile pass execs a plugin only when its file changed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headcni_core::node::chain_versions::{
    ChainProbe, ChainVersions, PluginProbe, decide, parse_version_reply,
};
use headcni_plugin::delegate;
use serde_json::Value;

/// How long one plugin may take to answer VERSION.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The stdin of a VERSION probe (libcni ≥ 1.2 sends its own newest version).
const PROBE_STDIN: &[u8] = br#"{"cniVersion":"1.1.0"}"#;

/// The identity of a plugin binary: (device, inode, size, mtime in ns).
type FileKey = (u64, u64, u64, i128);

/// Probes the chained plugins and caches the answers per binary. Cheap to clone (shared
/// cache).
#[derive(Clone, Default)]
pub struct ChainProber {
    cache: Arc<Mutex<HashMap<PathBuf, (FileKey, PluginProbe)>>>,
}

fn file_key(path: &Path) -> Option<FileKey> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    Some((m.dev(), m.ino(), m.size(), mtime))
}

/// Execs `binary` with VERSION and parses its answer.
pub fn probe_binary(binary: &Path, timeout: Duration) -> PluginProbe {
    let vars: Vec<(OsString, OsString)> = [
        ("CNI_NETNS", "dummy"),
        ("CNI_IFNAME", "dummy"),
        ("CNI_PATH", "dummy"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    match delegate::exec(binary, "VERSION", &vars, PROBE_STDIN, timeout) {
        Ok(out) => match parse_version_reply(&out) {
            Ok(list) => PluginProbe::Supported(list),
            Err(why) => PluginProbe::Unusable(why),
        },
        Err(e) => PluginProbe::Unusable(format!("{}: {}", e.msg, e.details)),
    }
}

impl ChainProber {
    /// A prober with an empty cache.
    pub fn new() -> ChainProber {
        ChainProber::default()
    }

    /// Probes one chained plugin object (`{"type": …}`) in `bin_dir` (blocking: execs).
    pub fn probe_one(&self, bin_dir: &Path, plugin: &Value) -> ChainProbe {
        let Some(ty) = plugin.get("type").and_then(Value::as_str) else {
            return ChainProbe {
                plugin_type: "<no type>".to_owned(),
                probe: PluginProbe::Unusable("the plugin object has no \"type\"".to_owned()),
            };
        };
        let probe = match delegate::find_plugin(ty, &[bin_dir.to_path_buf()]) {
            Err(e) if e.code == 7 => PluginProbe::Unusable(e.details),
            Err(e) => PluginProbe::Missing(format!("{} in {}", e.msg, bin_dir.display())),
            Ok(binary) => self.cached(&binary),
        };
        ChainProbe {
            plugin_type: ty.to_owned(),
            probe,
        }
    }

    fn cached(&self, binary: &Path) -> PluginProbe {
        let key = file_key(binary);
        if let Some(k) = key
            && let Some((ck, p)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(binary)
            && *ck == k
        {
            return p.clone();
        }
        let p = probe_binary(binary, PROBE_TIMEOUT);
        if let Some(k) = key {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(binary.to_path_buf(), (k, p.clone()));
        }
        p
    }

    /// The conflist's versions for the chain `chained` with plugins in `bin_dir` (blocking:
    /// execs what is not cached; at most [`PROBE_TIMEOUT`] per plugin).
    pub fn versions_blocking(&self, bin_dir: &Path, chained: &[Value]) -> ChainVersions {
        let probes: Vec<ChainProbe> = chained.iter().map(|p| self.probe_one(bin_dir, p)).collect();
        decide(&probes)
    }

    /// [`ChainProber::versions_blocking`] on the blocking pool. A failed task (a panic)
    /// gives the decision for an unknown chain (every plugin unusable).
    pub async fn versions(&self, bin_dir: &Path, chained: &[Value]) -> ChainVersions {
        let (me, dir, chain) = (self.clone(), bin_dir.to_path_buf(), chained.to_vec());
        let fallback: Vec<ChainProbe> = chained
            .iter()
            .map(|p| ChainProbe {
                plugin_type: p
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                probe: PluginProbe::Unusable("the probe task failed".to_owned()),
            })
            .collect();
        tokio::task::spawn_blocking(move || me.versions_blocking(&dir, &chain))
            .await
            .unwrap_or_else(|_| decide(&fallback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::cni::CniVersion;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A test plugin answering VERSION with versions up to 1.1.0: the conflist offers 1.1.0.
    #[test]
    fn a_plugin_supporting_1_1_0_is_offered_1_1_0() {
        let tmp = tempfile::tempdir().unwrap();
        script(
            tmp.path(),
            "new-plugin",
            r#"[ "$CNI_COMMAND" = VERSION ] || exit 1
echo '{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}'"#,
        );
        let v = ChainProber::new()
            .versions_blocking(tmp.path(), &[serde_json::json!({"type": "new-plugin"})]);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.cni_versions.last(), Some(&CniVersion::V1_1_0));
        assert_eq!(v.cni_version, CniVersion::V1_0_0);
    }

    #[test]
    fn missing_unusable_silent_and_path_like_plugins_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        script(tmp.path(), "fails", "echo nope; exit 3");
        script(tmp.path(), "garbage", "echo '{\"cniVersion\":\"1.0.0\"}'");
        script(tmp.path(), "hangs", "exec sleep 30");
        let prober = ChainProber::new();
        let chain = [
            serde_json::json!({"type": "absent"}),
            serde_json::json!({"type": "fails"}),
            serde_json::json!({"type": "garbage"}),
            serde_json::json!({"type": "../bin/sh"}),
            serde_json::json!({"no": "type"}),
        ];
        let probes: Vec<ChainProbe> = chain
            .iter()
            .map(|p| prober.probe_one(tmp.path(), p))
            .collect();
        assert!(
            matches!(probes[0].probe, PluginProbe::Missing(_)),
            "{probes:?}"
        );
        for p in &probes[1..] {
            assert!(matches!(p.probe, PluginProbe::Unusable(_)), "{p:?}");
        }
        let hang = probe_binary(&tmp.path().join("hangs"), Duration::from_millis(200));
        assert!(
            matches!(&hang, PluginProbe::Unusable(d) if d.contains("timed out")),
            "{hang:?}"
        );
        let v = prober.versions_blocking(tmp.path(), &chain);
        assert_eq!(v.problems.len(), chain.len());
        assert_eq!(v.cni_version, CniVersion::V1_0_0);
        assert!(v.cni_versions.iter().all(|x| *x <= CniVersion::V1_0_0));
    }

    #[test]
    fn answers_are_cached_until_the_binary_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let count = tmp.path().join("count");
        let body = |versions: &str| {
            format!(
                "echo x >> {}\necho '{{\"supportedVersions\":[{versions}]}}'",
                count.display()
            )
        };
        script(tmp.path(), "p", &body("\"1.0.0\""));
        let prober = ChainProber::new();
        let chain = [serde_json::json!({"type": "p"})];
        let execs = || {
            std::fs::read_to_string(&count)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(
            prober.versions_blocking(tmp.path(), &chain).cni_versions,
            [CniVersion::V1_0_0]
        );
        prober.versions_blocking(tmp.path(), &chain);
        assert_eq!(execs(), 1, "cached");
        // a new binary (new inode and size): asked again
        std::fs::remove_file(tmp.path().join("p")).unwrap();
        script(tmp.path(), "p", &body("\"1.0.0\", \"1.1.0\""));
        let v = prober.versions_blocking(tmp.path(), &chain);
        assert_eq!(execs(), 2);
        assert_eq!(v.cni_versions, [CniVersion::V1_0_0, CniVersion::V1_1_0]);
    }
}
