//! The dispatch behind [`crate::Plugin::call`]: the verb/version gate, the netns and MAC
//! preconditions, the IPAM client choice, the daemon event, then `headcni-core`'s
//! ADD/DEL/CHECK/GC or `headcni-ipam`'s store.

use std::ffi::OsString;
use std::path::Path;

use headcni_core::cni::{
    CniEnv, CniError, CniResult, CniVersion, Command, ErrorCode, MAX_NETWORK_NAME_BYTES,
    MAX_STDIN_BYTES, NetConf, ParsedConf, peek_version, version_reply,
};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{
    self, AddRequest, BridgeConf, CheckRequest, DelRequest, IpamClient, Namespaces,
};
use headcni_ipam::InProcessIpam;
use headcni_ipam::plugin::IpamPlugin;
use serde_json::{Map, Value};

use crate::delegated_ipam::DelegatedIpam;
use crate::{Answer, IPAM_TYPE, IpamRequest, Plugin, Role, delegate, events};

/// See [`Plugin::call`].
pub(crate) fn entry<N, I, K, V>(plugin: &Plugin<'_, N>, vars: I, stdin: &[u8]) -> Answer
where
    N: Namespaces,
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    if stdin.len() > MAX_STDIN_BYTES {
        let e = CniError::new(ErrorCode::Decode, "network configuration is too large")
            .with_details(format!(
                "more than {MAX_STDIN_BYTES} bytes on stdin; refused before parsing"
            ));
        return Answer::error(&e, None);
    }
    let cni_vars: Vec<(OsString, OsString)> = vars
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .filter(|(k, _)| k.as_encoded_bytes().starts_with(b"CNI_"))
        .collect();
    let version_hint = peek_version(stdin);
    let mut warnings = Vec::new();
    // A panic is a bug; the runtime still gets the protocol's error JSON, never silence.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(
            plugin,
            cni_vars,
            stdin,
            version_hint.as_deref(),
            &mut warnings,
        )
    }))
    .unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CniError::new(ErrorCode::Internal, "internal error").with_details(what))
    });
    let mut answer = match outcome {
        Ok(Some(v)) => Answer {
            stdout: format!("{v}\n").into_bytes(),
            exit_code: 0,
            warnings: Vec::new(),
        },
        Ok(None) => Answer {
            stdout: Vec::new(),
            exit_code: 0,
            warnings: Vec::new(),
        },
        Err(e) => Answer::error(&e, version_hint.as_deref()),
    };
    answer.warnings = warnings;
    answer
}

fn dispatch<N: Namespaces>(
    plugin: &Plugin<'_, N>,
    cni_vars: Vec<(OsString, OsString)>,
    stdin: &[u8],
    version_hint: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_vars(cni_vars.iter().cloned())?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(version_hint)));
    }
    match plugin.role {
        Role::Main => main_plugin(plugin, &env, &cni_vars, stdin, warnings),
        Role::Ipam => ipam_plugin(&env, stdin),
    }
}

fn gate(env: &CniEnv, version: CniVersion) -> Result<(), CniError> {
    let ok = match env.command {
        Command::Check => version.supports_check(),
        Command::Status | Command::Gc => version.supports_status_gc(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(
            CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!(
                    "config version {version} does not allow {}",
                    env.command.as_str()
                )),
        )
    }
}

fn attachment(env: &CniEnv) -> Attachment {
    Attachment {
        container_id: env.container_id().to_owned(),
        ifname: env.ifname().to_owned(),
    }
}

fn prev_result<P>(conf: &NetConf<P>) -> Result<Option<CniResult>, CniError> {
    conf.prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()
}

/// The ADD/CHECK precondition on `CNI_NETNS`: it is a network namespace (never opened in a
/// way that could block, see [`Namespaces::is_own`]) and not the plugin's own.
async fn check_netns<N: Namespaces>(ns: &N, path: &Path) -> Result<(), CniError> {
    match ns.is_own(path).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_NETNS is the plugin's own network namespace",
        )
        .with_details(path.display().to_string())),
        Err(e) => Err(CniError::new(
            ErrorCode::UnknownContainer,
            "CNI_NETNS is not a network namespace",
        )
        .with_details(format!("{}: {e}", path.display()))),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(ErrorCode::Internal, "failed to start the async runtime")
                .with_details(e.to_string())
        })
}

fn main_plugin<N: Namespaces>(
    plugin: &Plugin<'_, N>,
    env: &CniEnv,
    cni_vars: &[(OsString, OsString)],
    stdin: &[u8],
    warnings: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let started = std::time::Instant::now();
    let parsed = NetConf::<BridgeConf>::parse(stdin)?;
    let outcome = main_verb(plugin, env, cni_vars, stdin, &parsed, warnings);
    if plugin.events {
        report_event(env, &parsed.conf.plugin, &outcome, started);
    }
    outcome.map(|r| r.map(|res| res.to_json(parsed.version)))
}

/// Tells the node daemon what happened, best effort: one non-blocking datagram, whatever
/// the outcome; nothing waits on the daemon (an absent daemon costs ~14 µs).
fn report_event(
    env: &CniEnv,
    conf: &BridgeConf,
    outcome: &Result<Option<CniResult>, CniError>,
    started: std::time::Instant,
) {
    let socket = conf
        .daemon_socket
        .as_deref()
        .unwrap_or(events::DEFAULT_SOCKET);
    let ev = events::PluginEvent {
        verb: env.command.as_str().to_owned(),
        container_id: env.container_id().to_owned(),
        ifname: env.ifname().to_owned(),
        pod_namespace: env.args.k8s_pod_namespace.clone(),
        pod_name: env.args.k8s_pod_name.clone(),
        ips: match outcome {
            Ok(Some(r)) => r.ips.iter().map(|i| i.address.ip()).collect(),
            _ => Vec::new(),
        },
        ok: outcome.is_ok(),
        code: outcome.as_ref().err().map(|e| e.code),
        duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    };
    let _ = events::send(Path::new(socket), &ev);
}

fn main_verb<N: Namespaces>(
    plugin: &Plugin<'_, N>,
    env: &CniEnv,
    cni_vars: &[(OsString, OsString)],
    stdin: &[u8],
    parsed: &ParsedConf<BridgeConf>,
    warnings: &mut Vec<String>,
) -> Result<Option<CniResult>, CniError> {
    let ns = plugin.ns;
    let (version, conf) = (parsed.version, &parsed.conf);
    gate(env, version)?;
    conf.plugin.validate()?;
    if conf.plugin.ip_masq {
        warnings.push(
            "ipMasq is ignored: masquerade is done by the node daemon's nftables table".into(),
        );
    }
    let ipam = ipam_client(plugin.ipam, env, cni_vars, conf, stdin)?;
    let rt = runtime()?;
    match env.command {
        Command::Add => {
            let netns = env.netns.as_deref().ok_or_else(|| {
                CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set")
            })?;
            rt.block_on(check_netns(ns, netns))?;
            let mac = conf
                .runtime_config
                .mac
                .as_deref()
                .or(env.args.mac.as_deref());
            if let Some(m) = mac
                && !headcni_core::cni::is_mac(m)
            {
                return Err(
                    CniError::new(ErrorCode::InvalidConfig, "invalid MAC address")
                        .with_details(m.to_owned()),
                );
            }
            let req = AddRequest {
                container_id: env.container_id(),
                ifname: env.ifname(),
                netns,
                mac,
                dns: conf.dns.as_ref(),
            };
            match rt.block_on(plugin::add(ns, ipam.as_ref(), &conf.plugin, &req)) {
                Ok(added) => {
                    warnings.extend(added.warnings.iter().map(ToString::to_string));
                    Ok(Some(added.result))
                }
                Err(e) => {
                    warnings.extend(e.warnings.iter().map(ToString::to_string));
                    warnings.extend(e.rollback_errors.iter().map(ToString::to_string));
                    Err(e.error)
                }
            }
        }
        Command::Del => {
            let req = DelRequest {
                container_id: env.container_id(),
                ifname: env.ifname(),
                netns: env.netns.as_deref(),
            };
            rt.block_on(plugin::del(ns, ipam.as_ref(), &req))?;
            Ok(None)
        }
        Command::Check => {
            let netns = env.netns.as_deref().ok_or_else(|| {
                CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set")
            })?;
            rt.block_on(check_netns(ns, netns))?;
            let prev = prev_result(conf)?.ok_or_else(|| {
                CniError::new(ErrorCode::InvalidConfig, "CHECK needs prevResult")
                    .with_details("the request has no prevResult")
            })?;
            let req = CheckRequest {
                container_id: env.container_id(),
                ifname: env.ifname(),
                netns,
                prev: &prev,
            };
            rt.block_on(plugin::check(ns, ipam.as_ref(), &conf.plugin, &req))?;
            Ok(None)
        }
        Command::Gc => {
            let valid = conf.gc_valid_attachments().unwrap_or(&[]);
            rt.block_on(plugin::gc(ns, ipam.as_ref(), &conf.plugin, valid))
                .map_err(|e| {
                    warnings.extend(
                        e.delete_errors
                            .iter()
                            .map(|d| format!("GC: deleting a host veth failed: {d}")),
                    );
                    e.error
                })?;
            Ok(None)
        }
        Command::Status => {
            rt.block_on(ipam.status())?;
            rt.block_on(plugin::bridge_status(ns, &conf.plugin.bridge))?;
            if let Some(socket) = conf.plugin.daemon_socket.as_deref() {
                crate::readiness::daemon_status(Path::new(socket))?;
            }
            Ok(None)
        }
        // answered in `dispatch` before the configuration is parsed
        Command::Version => Ok(None),
    }
}

/// The IPAM of a DEL whose network name cannot be a store directory name: such a network
/// never got a reservation (its ADD fails with code 7), so there is nothing to release.
struct NothingReserved;

#[async_trait::async_trait]
impl IpamClient for NothingReserved {
    async fn add(&self) -> Result<plugin::IpamAdd, CniError> {
        Err(name_too_long())
    }
    async fn del(&self) -> Result<(), CniError> {
        Ok(())
    }
    async fn check(&self, _prev: &CniResult) -> Result<(), CniError> {
        Err(name_too_long())
    }
    async fn gc(
        &self,
        _valid: &[headcni_core::cni::GcAttachment],
    ) -> Result<Vec<headcni_core::ipam::Attachment>, CniError> {
        Ok(Vec::new())
    }
    async fn status(&self) -> Result<(), CniError> {
        Err(name_too_long())
    }
}

fn name_too_long() -> CniError {
    CniError::new(ErrorCode::InvalidConfig, "invalid network name").with_details(format!(
        "longer than {MAX_NETWORK_NAME_BYTES} bytes, the limit of the IPAM store's directory name"
    ))
}

/// DEL (spec: tolerates missing resources) of a network whose name cannot be a store
/// directory: nothing can be reserved under it.
fn del_without_store<P>(env: &CniEnv, conf: &NetConf<P>) -> bool {
    env.command == Command::Del && conf.name.len() > MAX_NETWORK_NAME_BYTES
}

/// The IPAM client of a main-plugin request: the caller's [`crate::IpamSelector`] first,
/// then `headcni-ipam` in-process or the delegate `ipam.type` from `CNI_PATH`.
fn ipam_client(
    selector: Option<&dyn crate::IpamSelector>,
    env: &CniEnv,
    cni_vars: &[(OsString, OsString)],
    conf: &NetConf<BridgeConf>,
    stdin: &[u8],
) -> Result<Box<dyn IpamClient>, CniError> {
    let ipam_type = conf
        .ipam
        .as_ref()
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CniError::new(ErrorCode::InvalidConfig, "ipam.type is required")
                .with_details("headcni needs an IPAM plugin")
        })?;
    if let Some(selector) = selector {
        let req = IpamRequest {
            env,
            cni_vars,
            conf,
            ipam_type,
            stdin,
        };
        if let Some(client) = selector.select(&req)? {
            return Ok(client);
        }
    }
    if ipam_type == IPAM_TYPE {
        if del_without_store(env, conf) {
            return Ok(Box::new(NothingReserved));
        }
        let plugin = IpamPlugin::from_conf(conf)?;
        let requested = if env.command == Command::Add {
            IpamPlugin::requested_ips(conf, &env.args)?
        } else {
            Vec::new()
        };
        Ok(Box::new(InProcessIpam {
            plugin,
            attachment: attachment(env),
            requested,
        }))
    } else {
        if env.path.is_empty() {
            return Err(
                CniError::new(ErrorCode::InvalidEnvironment, "CNI_PATH is not set")
                    .with_details(format!("needed to find the IPAM plugin {ipam_type:?}")),
            );
        }
        let binary = delegate::find_plugin(ipam_type, &env.path)?;
        Ok(Box::new(DelegatedIpam {
            binary,
            config: stdin.to_vec(),
            cni_vars: cni_vars.to_vec(),
            timeout: std::time::Duration::from_secs(conf.plugin.delegate_timeout_secs),
        }))
    }
}

fn ipam_plugin(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let ParsedConf { version, conf, .. } = NetConf::<Map<String, Value>>::parse(stdin)?;
    gate(env, version)?;
    if del_without_store(env, &conf) {
        return Ok(None);
    }
    let plugin = IpamPlugin::from_conf(&conf)?;
    match env.command {
        Command::Add => {
            let requested = IpamPlugin::requested_ips(&conf, &env.args)?;
            Ok(Some(
                plugin.add(&attachment(env), &requested)?.to_json(version),
            ))
        }
        Command::Del => plugin.del(&attachment(env)).map(|_| None),
        Command::Check => {
            let prev = prev_result(&conf)?;
            plugin.check(&attachment(env), prev.as_ref()).map(|_| None)
        }
        Command::Gc => {
            let valid: Vec<Attachment> = conf
                .gc_valid_attachments()
                .unwrap_or(&[])
                .iter()
                .map(Attachment::from)
                .collect();
            plugin.gc(&valid).map(|_| None)
        }
        Command::Status => plugin.status().map(|_| None),
        Command::Version => Ok(Some(version_reply(Some(version.as_str())))),
    }
}
