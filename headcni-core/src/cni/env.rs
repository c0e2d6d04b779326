//! The CNI environment (CNI spec 1.1.0 §"Parameters").

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::args::CniArgs;
use super::error::{CniError, ErrorCode};

/// The CNI verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Command {
    /// ADD: attach a container.
    Add,
    /// DEL: detach a container; idempotent.
    Del,
    /// CHECK: verify an attachment (spec ≥ 0.4.0).
    Check,
    /// STATUS: can the plugin service ADD? (spec ≥ 1.1.0).
    Status,
    /// GC: release everything not in `cni.dev/valid-attachments` (spec ≥ 1.1.0).
    Gc,
    /// VERSION: report supported versions.
    Version,
}

impl Command {
    /// Parses the exact upper-case verb.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The verb as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// ADD, DEL and CHECK act on one attachment (container ID + interface).
    pub fn is_attachment_verb(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated CNI environment of one plugin invocation.
///
/// libcni always sets all six `CNI_*` variables, empty when unused; an empty variable counts
/// as unset. Which are required depends on the verb (CNI spec 1.1.0 §"Parameters").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`: required for ADD/DEL/CHECK; `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: required for ADD/CHECK, optional for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: required for ADD/DEL/CHECK; a valid Linux interface name (1–15 bytes).
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`; required for GC (spec table), used to find delegated plugins.
    pub path: Vec<PathBuf>,
}

fn env_err(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// `true` if `s` is a valid container ID or network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_valid_id(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Validates a Linux interface name: 1–15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':', whitespace or a control character"
        ));
    }
    Ok(())
}

impl CniEnv {
    /// Reads and validates the CNI variables from `vars` (usually `std::env::vars_os()`;
    /// `String`/`&str` pairs work too). Variables not named `CNI_*` are ignored.
    ///
    /// Errors are code 4 (CNI spec 1.1.0 §"Error": invalid environment variables) and name
    /// the variable: a `CNI_*` value that is not UTF-8 (checked before anything is converted,
    /// so a name is never silently replaced by U+FFFD), a missing or invalid value; a bad
    /// `CNI_ARGS` is code 4 too.
    pub fn from_vars<I, K, V>(vars: I) -> Result<CniEnv, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut map: HashMap<String, String> = HashMap::new();
        for (k, v) in vars {
            let (k, v): (OsString, OsString) = (k.into(), v.into());
            if !k.as_encoded_bytes().starts_with(b"CNI_") {
                continue;
            }
            let k = k.into_string().map_err(|k| {
                env_err("a CNI_* variable name is not valid UTF-8").with_details(format!("{k:?}"))
            })?;
            let v = v.into_string().map_err(|v| {
                env_err(format!("{k} is not valid UTF-8")).with_details(format!("{v:?}"))
            })?;
            if !v.is_empty() {
                map.insert(k, v);
            }
        }
        let get = |k: &str| map.get(k).cloned();
        let command_s = get("CNI_COMMAND").ok_or_else(|| env_err("CNI_COMMAND is not set"))?;
        let command = Command::parse(&command_s)
            .ok_or_else(|| env_err(format!("CNI_COMMAND {command_s:?} is not a CNI verb")))?;
        let container_id = get("CNI_CONTAINERID");
        let netns = get("CNI_NETNS").map(PathBuf::from);
        let ifname = get("CNI_IFNAME");
        let path: Vec<PathBuf> = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        if command.is_attachment_verb() {
            let cid = container_id
                .as_deref()
                .ok_or_else(|| env_err("CNI_CONTAINERID is not set"))?;
            if !is_valid_id(cid) {
                return Err(env_err("CNI_CONTAINERID is invalid")
                    .with_details(format!("{cid:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")));
            }
            let ifn = ifname
                .as_deref()
                .ok_or_else(|| env_err("CNI_IFNAME is not set"))?;
            validate_ifname(ifn).map_err(|d| env_err("CNI_IFNAME is invalid").with_details(d))?;
            if command != Command::Del && netns.is_none() {
                return Err(env_err("CNI_NETNS is not set"));
            }
        }
        if command == Command::Gc && path.is_empty() {
            return Err(env_err("CNI_PATH is not set"));
        }
        let args = if command.is_attachment_verb() {
            CniArgs::parse(get("CNI_ARGS").as_deref().unwrap_or(""))?
        } else {
            CniArgs::default()
        };
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The container ID; only `None` for STATUS, GC and VERSION.
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or("")
    }

    /// The interface name; only `None` for STATUS, GC and VERSION.
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        CniEnv::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn add_requires_attachment_vars() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", ""),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ];
        let e = env(&base).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
            let v: Vec<_> = base
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let err = env(&v).unwrap_err();
            assert_eq!(err.code, 4);
            assert!(err.msg.contains(missing), "{err:?}");
        }
    }

    #[test]
    fn del_allows_empty_netns_and_gc_needs_path() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(e.netns.is_none());
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap_err().code, 4);
        assert!(env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn invalid_values() {
        for (cid, ifn) in [
            ("-x", "eth0"),
            ("a b", "eth0"),
            ("a", "0123456789abcdef"),
            ("a", "e/0"),
            ("a", ".."),
        ] {
            let r = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", ifn),
            ]);
            assert_eq!(r.unwrap_err().code, 4, "{cid} {ifn}");
        }
        assert_eq!(env(&[("CNI_COMMAND", "add")]).unwrap_err().code, 4);
    }

    #[test]
    fn non_utf8_cni_variables_are_refused_before_any_lossy_conversion() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(b"eth\xff".to_vec());
        let vars = vec![
            (OsString::from("CNI_COMMAND"), OsString::from("ADD")),
            (OsString::from("CNI_CONTAINERID"), OsString::from("abc")),
            (OsString::from("CNI_NETNS"), OsString::from("/x")),
            (OsString::from("CNI_IFNAME"), bad.clone()),
            // a non-UTF-8 variable that is not a CNI one is ignored
            (OsString::from("OTHER"), bad),
        ];
        let err = CniEnv::from_vars(vars).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_IFNAME"), "{err:?}");
    }
}
