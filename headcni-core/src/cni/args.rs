//! `CNI_ARGS` parsing (CNI spec 1.1.0 §"Parameters"; conventions of libcni and kubelet/CRI).

use std::net::IpAddr;

use super::error::{CniError, ErrorCode};

/// The keys of `CNI_ARGS` HeadCNI understands.
///
/// `CNI_ARGS` is `K=V;K2=V2`. kubelet/CRI runtimes send `IgnoreUnknown=1` plus
/// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID` and `K8S_POD_UID` in any
/// order; podman sends `IgnoreUnknown=1;K8S_POD_NAME=…` and `IP=`/`MAC=` for `--ip`/`--mac-address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown` was set to a true value (`1`, `true`, `True`).
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`.
    pub k8s_pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub k8s_pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub k8s_pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub k8s_pod_uid: Option<String>,
    /// `IP=`: requested addresses, comma separated, each with an optional `/prefix` (ignored).
    pub ips: Vec<IpAddr>,
    /// `MAC=`: requested MAC address of the container interface, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// Keys HeadCNI does not know; kept so that callers can read them (only present when
    /// `IgnoreUnknown` is true, otherwise they are an error).
    pub unknown: Vec<(String, String)>,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, "invalid CNI_ARGS").with_details(msg)
}

fn truthy(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "True" | "TRUE" | "t" | "T" => Some(true),
        "0" | "false" | "False" | "FALSE" | "f" | "F" => Some(false),
        _ => None,
    }
}

impl CniArgs {
    /// Parses `CNI_ARGS`. An empty string gives the default.
    ///
    /// Errors (code 4, naming `CNI_ARGS`): a pair without exactly one `=`, an empty key, an
    /// unparsable `IP` or `MAC`, a bad `IgnoreUnknown` value, or an unknown key when
    /// `IgnoreUnknown` is not true (the reference plugins' behaviour).
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut out = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in s.split(';') {
            if pair.is_empty() {
                continue;
            }
            let mut kv = pair.split('=');
            let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(bad(format!("pair {pair:?} is not KEY=VALUE")));
            };
            if k.is_empty() {
                return Err(bad(format!("pair {pair:?} has an empty key")));
            }
            match k {
                "IgnoreUnknown" => {
                    out.ignore_unknown = truthy(v)
                        .ok_or_else(|| bad(format!("IgnoreUnknown={v:?} is not a boolean")))?;
                }
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = Some(v.to_owned()),
                "K8S_POD_NAME" => out.k8s_pod_name = Some(v.to_owned()),
                "K8S_POD_INFRA_CONTAINER_ID" => out.k8s_pod_infra_container_id = Some(v.to_owned()),
                "K8S_POD_UID" => out.k8s_pod_uid = Some(v.to_owned()),
                "IP" => {
                    for one in v.split(',').filter(|x| !x.is_empty()) {
                        let addr = one.split('/').next().unwrap_or(one);
                        let ip: IpAddr = addr
                            .parse()
                            .map_err(|_| bad(format!("IP={one:?} is not an IP address")))?;
                        out.ips.push(ip);
                    }
                }
                "MAC" => {
                    if !is_mac(v) {
                        return Err(bad(format!("MAC={v:?} is not a MAC address")));
                    }
                    out.mac = Some(v.to_ascii_lowercase());
                }
                _ => unknown.push((k.to_owned(), v.to_owned())),
            }
        }
        if !unknown.is_empty() && !out.ignore_unknown {
            let keys: Vec<String> = unknown.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(bad(format!(
                "unknown args {keys:?} (set IgnoreUnknown=1 to ignore them)"
            )));
        }
        out.unknown = unknown;
        Ok(out)
    }
}

/// `true` for a colon-separated 6-byte MAC address such as `02:42:ac:11:00:02`.
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_args() {
        let a = CniArgs::parse(
            "K8S_POD_UID=u;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c;X=y",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.k8s_pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.k8s_pod_name.as_deref(), Some("p"));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("c"));
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("u"));
        assert_eq!(a.unknown, vec![("X".to_owned(), "y".to_owned())]);
    }

    #[test]
    fn unknown_without_ignore_is_error() {
        let e = CniArgs::parse("K8S_POD_NAME=a;FOO=b").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.details.contains("FOO=b"), "{e:?}");
        assert!(CniArgs::parse("IgnoreUnknown=0;FOO=b").is_err());
    }

    #[test]
    fn ip_and_mac() {
        let a = CniArgs::parse("IP=10.1.0.7/24,fd00::7;MAC=02:AA:bb:cc:dd:ee").unwrap();
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.mac.as_deref(), Some("02:aa:bb:cc:dd:ee"));
        assert_eq!(CniArgs::parse("IP=10.1.0.300").unwrap_err().code, 4);
        assert_eq!(CniArgs::parse("MAC=zz").unwrap_err().code, 4);
    }

    #[test]
    fn malformed_pairs() {
        for s in ["A", "A=b=c", "=x", "IgnoreUnknown=maybe"] {
            assert_eq!(CniArgs::parse(s).unwrap_err().code, 4, "{s}");
        }
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse(";;").unwrap(), CniArgs::default());
    }
}
