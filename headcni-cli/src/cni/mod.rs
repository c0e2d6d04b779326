//! CNI plugin mode: `headcni` (main plugin) and `headcni-ipam` (IPAM plugin, same binary
//! invoked under that name). stdout carries exactly one result or error JSON; logs go to
//! stderr.

mod delegate;
mod ipam_client;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;

use headcni_core::cni::{
    CniEnv, CniError, CniResult, CniVersion, Command, ErrorCode, MAX_NETWORK_NAME_BYTES,
    MAX_STDIN_BYTES, NetConf, ParsedConf, cap_echoed_version, peek_version, version_reply,
};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{
    self, AddRequest, BridgeConf, CheckRequest, DelRequest, IpamClient, Namespaces,
};
use headcni_ipam::plugin::IpamPlugin;
use serde_json::{Map, Value};

use headcni_ipam::InProcessIpam;
use headcni_netlink::NetlinkNamespaces;
use ipam_client::DelegatedIpam;

/// The in-process IPAM plugin's type name (also the name of the `headcni-ipam` symlink).
pub const IPAM_TYPE: &str = "headcni-ipam";

/// Which plugin this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main plugin (`type: headcni`).
    Main,
    /// The IPAM plugin (`type: headcni-ipam`).
    Ipam,
}

/// What one plugin invocation answers: the bytes for stdout (exactly one JSON document and a
/// newline, or nothing for a successful DEL/CHECK/GC/STATUS) and the exit status (0 iff
/// success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The bytes to write to stdout.
    pub stdout: Vec<u8>,
    /// The process exit status: 0 on success, else the error's [`CniError::exit_code`].
    pub exit_code: i32,
}

impl Answer {
    fn error(e: &CniError, version_hint: Option<&str>) -> Answer {
        let ver = version_hint.unwrap_or(CniVersion::LATEST.as_str());
        Answer {
            stdout: format!("{}\n", e.to_json(cap_echoed_version(ver))).into_bytes(),
            exit_code: e.exit_code(),
        }
    }
}

/// Runs one CNI invocation with the process environment and stdin (at most
/// [`MAX_STDIN_BYTES`] + 1 bytes are read) on rtnetlink, writes the answer to stdout and
/// returns the exit code.
pub fn run(role: Role) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    let answer = match read {
        Err(e) => Answer::error(
            &CniError::new(ErrorCode::Io, "failed to read stdin").with_details(e.to_string()),
            None,
        ),
        Ok(_) => entry(role, std::env::vars_os(), &stdin, &NetlinkNamespaces),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&answer.stdout);
    let _ = out.flush();
    answer.exit_code
}

/// The plugin's entry point as a library function: one CNI invocation of `role` with the
/// environment `vars` (only `CNI_*` variables are looked at; values must be UTF-8), the
/// request configuration `stdin` and the namespace backend `ns` (rtnetlink in production,
/// [`headcni_core::plugin::testing::FakeNs`] in tests and fuzzing).
///
/// Always answers, never panics to the caller: a request longer than [`MAX_STDIN_BYTES`] is
/// code 6 before anything is parsed; a panic inside is caught and answered as code 199.
/// Errors are written in the request's `cniVersion` (capped, see
/// [`headcni_core::cni::cap_echoed_version`]) or the latest version. Source: CNI spec 1.1.0
/// §"Protocol" and §"Error".
pub fn entry<N, I, K, V>(role: Role, vars: I, stdin: &[u8], ns: &N) -> Answer
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
    // A panic is a bug; the runtime still gets the protocol's error JSON, never silence.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(role, cni_vars, stdin, version_hint.as_deref(), ns)
    }))
    .unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(CniError::new(ErrorCode::Internal, "internal error").with_details(what))
    });
    match outcome {
        Ok(Some(v)) => Answer {
            stdout: format!("{v}\n").into_bytes(),
            exit_code: 0,
        },
        Ok(None) => Answer {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Err(e) => Answer::error(&e, version_hint.as_deref()),
    }
}

fn dispatch<N: Namespaces>(
    role: Role,
    cni_vars: Vec<(OsString, OsString)>,
    stdin: &[u8],
    version_hint: Option<&str>,
    ns: &N,
) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_vars(cni_vars.iter().cloned())?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(version_hint)));
    }
    match role {
        Role::Main => main_plugin(&env, &cni_vars, stdin, ns),
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
    env: &CniEnv,
    cni_vars: &[(OsString, OsString)],
    stdin: &[u8],
    ns: &N,
) -> Result<Option<Value>, CniError> {
    let started = std::time::Instant::now();
    let parsed = NetConf::<BridgeConf>::parse(stdin)?;
    let outcome = main_verb(env, cni_vars, stdin, &parsed, ns);
    report_event(env, &parsed.conf.plugin, &outcome, started);
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
        .unwrap_or(crate::events::DEFAULT_SOCKET);
    let ev = crate::events::PluginEvent {
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
    let _ = crate::events::send(Path::new(socket), &ev);
}

fn main_verb<N: Namespaces>(
    env: &CniEnv,
    cni_vars: &[(OsString, OsString)],
    stdin: &[u8],
    parsed: &ParsedConf<BridgeConf>,
    ns: &N,
) -> Result<Option<CniResult>, CniError> {
    let (version, conf) = (parsed.version, &parsed.conf);
    gate(env, version)?;
    conf.plugin.validate()?;
    if conf.plugin.ip_masq {
        eprintln!(
            "headcni: ipMasq is ignored: masquerade is done by the node daemon's nftables table"
        );
    }
    let ipam = ipam_client(env, cni_vars, conf, stdin)?;
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
            let result = rt.block_on(plugin::add(ns, ipam.as_ref(), &conf.plugin, &req))?;
            Ok(Some(result))
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
            rt.block_on(plugin::gc(ns, ipam.as_ref(), &conf.plugin, valid))?;
            Ok(None)
        }
        Command::Status => {
            rt.block_on(ipam.status())?;
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

fn ipam_client(
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
