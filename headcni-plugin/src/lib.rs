//! HeadCNI's CNI plugin as a library, like netavark's `Plugin`/`PluginExec`: one call takes
//! the environment, the request configuration (stdin) and the dependencies, and returns the
//! bytes for stdout and the exit code. The `headcni` binary is this call plus process wiring
//! (read stdin, write stdout, print [`Answer::warnings`] on stderr, exit).
//!
//! Built in (CNI spec 1.1.0 §"Protocol", §"Error", §"Delegated plugins (IPAM)"):
//! - the `CNI_*` environment and the NetConf are parsed and bounded (stdin at most
//!   [`MAX_STDIN_BYTES`]); `VERSION` is answered before the configuration is parsed;
//! - the verb/version gate (CHECK needs 0.4.0+, GC and STATUS 1.1.0+; code 2), the
//!   `CNI_NETNS` precondition of ADD/CHECK and the MAC check of ADD;
//! - the IPAM client choice: `headcni-ipam` in-process, any other `ipam.type` exec'ed from
//!   `CNI_PATH` with a time limit and an output cap, or the caller's [`IpamSelector`];
//! - every error is the spec's error JSON with a non-zero exit; a panic becomes code 199;
//! - after each verb, one best-effort datagram to the node daemon ([`events`]);
//! - STATUS: the IPAM's check (code 50 when the range is exhausted), the bridge's (code 50
//!   when a link that is not a bridge holds its name) and, when the configuration names a
//!   `daemonSocket`, the node daemon's readiness file next to it, read without waiting on
//!   the daemon (code 51 while the daemon is gone or not ready: route not approved,
//!   tailscaled down, PodCIDR unknown; code 50 when it reports that ADD cannot succeed;
//!   `headcni_core::node::ready_file`).
//!
//! The dependencies: a [`Namespaces`] backend (rtnetlink's `NetlinkNamespaces` in
//! `headcni`, your own in an out-of-tree plugin, see `examples/out_of_tree_plugin.rs`) and,
//! optionally, an [`IpamSelector`].
//!
//! ```no_run
//! # use headcni_core::plugin::testing::FakeNs;
//! use headcni_plugin::{Plugin, Role};
//! # let ns = FakeNs::default();
//! let answer = Plugin::new(Role::Main, &ns).call_reader(std::env::vars_os(), std::io::stdin());
//! for w in &answer.warnings {
//!     eprintln!("my-plugin: {w}");
//! }
//! std::io::Write::write_all(&mut std::io::stdout(), &answer.stdout).ok();
//! std::process::exit(answer.exit_code);
//! ```

pub mod delegate;
mod delegated_ipam;
mod dispatch;
pub mod events;
mod readiness;

use std::ffi::OsString;
use std::io::Read;

use headcni_core::cni::{
    CniEnv, CniError, CniVersion, ErrorCode, MAX_STDIN_BYTES, NetConf, cap_echoed_version,
};
use headcni_core::plugin::{BridgeConf, IpamClient, Namespaces};

pub use delegate::MAX_DELEGATE_OUTPUT_BYTES;

/// The in-process IPAM plugin's type name (also the name of the `headcni-ipam` symlink):
/// [`headcni_core::defaults::IPAM_TYPE`].
pub use headcni_core::defaults::IPAM_TYPE;

/// Which plugin this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main plugin (`type: headcni`): bridge, veth, addresses, routes.
    Main,
    /// The IPAM plugin (`type: headcni-ipam`): the host-local compatible store only.
    Ipam,
}

/// What one plugin invocation answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The bytes for stdout: exactly one JSON document and a newline, or nothing for a
    /// successful DEL/CHECK/GC/STATUS.
    pub stdout: Vec<u8>,
    /// The process exit status: 0 on success, else the error's [`CniError::exit_code`].
    pub exit_code: i32,
    /// Messages for the operator, never for the runtime: failed rollback steps of a failed
    /// ADD, failed host veth deletions of GC, skipped host veth names, ignored settings. One
    /// line each, without a program prefix; `headcni` writes each to stderr as
    /// `headcni: <message>`. The library prints nothing.
    pub warnings: Vec<String>,
}

impl Answer {
    /// The error JSON of `e` in the request's version `version_hint` (capped, see
    /// [`cap_echoed_version`]) or the latest, with `e`'s exit code.
    pub fn error(e: &CniError, version_hint: Option<&str>) -> Answer {
        let ver = version_hint.unwrap_or(CniVersion::LATEST.as_str());
        Answer {
            stdout: format!("{}\n", e.to_json(cap_echoed_version(ver))).into_bytes(),
            exit_code: e.exit_code(),
            warnings: Vec::new(),
        }
    }
}

/// A main-plugin request's IPAM, as an [`IpamSelector`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct IpamRequest<'r> {
    /// The parsed `CNI_*` environment.
    pub env: &'r CniEnv,
    /// The request's `CNI_*` variables as received (for a delegate's environment).
    pub cni_vars: &'r [(OsString, OsString)],
    /// The parsed NetConf (its `ipam` object is `conf.ipam`).
    pub conf: &'r NetConf<BridgeConf>,
    /// `ipam.type` (present: a NetConf without it is refused with code 7 first).
    pub ipam_type: &'r str,
    /// The request configuration exactly as received on stdin.
    pub stdin: &'r [u8],
}

/// Chooses the IPAM client of a main-plugin request, before the built-in choice.
///
/// Return `Ok(Some(client))` to serve the request with `client` (e.g. an in-process IPAM
/// with a custom strategy or store), `Ok(None)` to fall back to the built-in choice
/// (`headcni-ipam` in-process, else the delegate `ipam.type` from `CNI_PATH`), or an error,
/// which is the request's answer.
pub trait IpamSelector: Send + Sync {
    /// The IPAM client for `req`, or `None` for the built-in choice.
    fn select(&self, req: &IpamRequest<'_>) -> Result<Option<Box<dyn IpamClient>>, CniError>;
}

/// The plugin entry point with its dependencies: `Plugin::new(role, &ns)`, optionally
/// [`Plugin::with_ipam`] and [`Plugin::without_events`], then [`Plugin::call`] once per
/// CNI invocation.
pub struct Plugin<'a, N> {
    role: Role,
    ns: &'a N,
    ipam: Option<&'a dyn IpamSelector>,
    events: bool,
}

impl<'a, N: Namespaces> Plugin<'a, N> {
    /// The plugin `role` on the namespace backend `ns`, with the built-in IPAM choice and
    /// the daemon events on.
    pub fn new(role: Role, ns: &'a N) -> Self {
        Plugin {
            role,
            ns,
            ipam: None,
            events: true,
        }
    }

    /// Asks `selector` for the IPAM client of each main-plugin request first.
    pub fn with_ipam(mut self, selector: &'a dyn IpamSelector) -> Self {
        self.ipam = Some(selector);
        self
    }

    /// Sends no event to the node daemon (by default one best-effort datagram per verb goes
    /// to `daemonSocket`, else [`events::DEFAULT_SOCKET`]).
    pub fn without_events(mut self) -> Self {
        self.events = false;
        self
    }

    /// One CNI invocation with the environment `vars` (only `CNI_*` variables are looked
    /// at; values must be UTF-8) and the request configuration `stdin`.
    ///
    /// Always answers, never panics to the caller: a request longer than
    /// [`MAX_STDIN_BYTES`] is code 6 before anything is parsed; a panic inside is caught and
    /// answered as code 199. Errors are written in the request's `cniVersion` (capped, see
    /// [`cap_echoed_version`]) or the latest version. Source: CNI spec 1.1.0 §"Protocol" and
    /// §"Error".
    pub fn call<I, K, V>(&self, vars: I, stdin: &[u8]) -> Answer
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        dispatch::entry(self, vars, stdin)
    }

    /// [`Plugin::call`] with the configuration read from `stdin` (at most
    /// [`MAX_STDIN_BYTES`] + 1 bytes are read; a read error is code 5).
    pub fn call_reader<I, K, V>(&self, vars: I, stdin: impl Read) -> Answer
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut buf = Vec::new();
        match stdin.take(MAX_STDIN_BYTES as u64 + 1).read_to_end(&mut buf) {
            Ok(_) => self.call(vars, &buf),
            Err(e) => Answer::error(
                &CniError::new(ErrorCode::Io, "failed to read stdin").with_details(e.to_string()),
                None,
            ),
        }
    }
}

/// One CNI invocation of `role` on the namespace backend `ns` with the built-in IPAM choice
/// and daemon events: `Plugin::new(role, ns).call(vars, stdin)` (see [`Plugin::call`]).
pub fn entry<N, I, K, V>(role: Role, vars: I, stdin: &[u8], ns: &N) -> Answer
where
    N: Namespaces,
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    Plugin::new(role, ns).call(vars, stdin)
}
