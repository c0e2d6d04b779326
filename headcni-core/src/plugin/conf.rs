//! The `headcni` plugin's own NetConf keys.

use serde::{Deserialize, Serialize};

use crate::cni::{CniError, ErrorCode, validate_ifname};

/// The default bridge name ([`crate::defaults::BRIDGE`]).
pub use crate::defaults::BRIDGE as DEFAULT_BRIDGE;

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_owned()
}

fn default_true() -> bool {
    true
}

/// The default of `delegateTimeoutSeconds`: 60 s.
pub const DEFAULT_DELEGATE_TIMEOUT_SECS: u64 = 60;
/// The largest `delegateTimeoutSeconds` accepted: 600 s.
pub const MAX_DELEGATE_TIMEOUT_SECS: u64 = 600;

fn default_delegate_timeout() -> u64 {
    DEFAULT_DELEGATE_TIMEOUT_SECS
}

/// The plugin-specific keys of a `headcni` plugin configuration (flattened into
/// [`crate::cni::NetConf`]). Names follow the reference `bridge` plugin where they overlap.
///
/// ```json
/// {"type": "headcni", "bridge": "headcni0", "mtu": 1280, "isGateway": true,
///  "isDefaultGateway": true, "hairpinMode": false, "ipam": {"type": "headcni-ipam", ...}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeConf {
    /// Bridge name; default `headcni0`.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// MTU in bytes for the bridge and both veth ends; default: the kernel's (1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Put the range gateways on the bridge and enable forwarding; default `true`.
    #[serde(default = "default_true", rename = "isGateway")]
    pub is_gateway: bool,
    /// Add a default route via the gateway in the container (implies `isGateway`); default `false`.
    #[serde(default, rename = "isDefaultGateway")]
    pub is_default_gateway: bool,
    /// Hairpin mode on the bridge port (a pod can reach itself through a service); default `false`.
    #[serde(default, rename = "hairpinMode")]
    pub hairpin_mode: bool,
    /// Accepted for compatibility with bridge configurations; HeadCNI's masquerade is done by
    /// the node daemon's nftables table, so this only logs a note when true.
    #[serde(default, rename = "ipMasq")]
    pub ip_masq: bool,
    /// Accepted for compatibility (the node daemon's reporting socket, issue-3 feature).
    #[serde(
        default,
        rename = "daemonSocket",
        skip_serializing_if = "Option::is_none"
    )]
    pub daemon_socket: Option<String>,
    /// Seconds a delegated IPAM plugin (an `ipam.type` other than `headcni-ipam`, exec'ed
    /// from `CNI_PATH`) may run per call before it and its process group are killed;
    /// 1..=600, default 60.
    #[serde(
        default = "default_delegate_timeout",
        rename = "delegateTimeoutSeconds"
    )]
    pub delegate_timeout_secs: u64,
}

impl Default for BridgeConf {
    fn default() -> Self {
        BridgeConf {
            bridge: default_bridge(),
            mtu: None,
            is_gateway: true,
            is_default_gateway: false,
            hairpin_mode: false,
            ip_masq: false,
            daemon_socket: None,
            delegate_timeout_secs: DEFAULT_DELEGATE_TIMEOUT_SECS,
        }
    }
}

/// Smallest MTU accepted (IPv4 minimum, RFC 791).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted.
pub const MAX_MTU: u32 = 65535;

impl BridgeConf {
    /// Validates the keys: a valid bridge name, an MTU in 68..=65535 (and ≥ 1280 when IPv6
    /// addresses are configured, which the caller checks with the IPAM result),
    /// `delegateTimeoutSeconds` in 1..=600. Code 7.
    pub fn validate(&self) -> Result<(), CniError> {
        validate_ifname(&self.bridge).map_err(|d| {
            CniError::new(ErrorCode::InvalidConfig, "invalid bridge name").with_details(d)
        })?;
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(CniError::new(ErrorCode::InvalidConfig, "invalid mtu")
                .with_details(format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")));
        }
        if !(1..=MAX_DELEGATE_TIMEOUT_SECS).contains(&self.delegate_timeout_secs) {
            return Err(
                CniError::new(ErrorCode::InvalidConfig, "invalid delegateTimeoutSeconds")
                    .with_details(format!(
                        "{} is outside 1..={MAX_DELEGATE_TIMEOUT_SECS}",
                        self.delegate_timeout_secs
                    )),
            );
        }
        Ok(())
    }

    /// `isGateway`, which `isDefaultGateway` implies.
    pub fn gateway(&self) -> bool {
        self.is_gateway || self.is_default_gateway
    }
}

/// The host-side veth name of an attachment: `veth` + 11 hex digits of the FNV-1a 64 hash
/// of `<containerID>/<ifname>`, so DEL can find it without the container's netns and two
/// attachments collide with probability ≈ n²/2⁴⁵.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = crate::hash::fnv1a64(container_id.bytes().chain([b'/']).chain(ifname.bytes()));
    format!("veth{:011x}", h >> 20)
}

/// How many host veth names ADD tries for one attachment: [`host_veth_name`] and then
/// [`host_veth_alt_name`] 1, 2 and 3, taking the first that is free. A name is skipped when
/// another attachment's link holds it (a 44-bit hash collision), so a collision never makes
/// one pod's ADD touch another pod's link.
pub const HOST_VETH_NAMES: u32 = 4;

/// The `salt`-th alternative host veth name of an attachment (`salt` ≥ 1): `veth` + 11 hex
/// digits of the FNV-1a 64 hash of `<containerID>/<ifname>/<salt>` (decimal salt). Used
/// only when [`host_veth_name`] is held by another attachment; DEL, CHECK and GC then find
/// the link by its [`attachment_mark`], not by its name.
pub fn host_veth_alt_name(container_id: &str, ifname: &str, salt: u32) -> String {
    let salt = salt.to_string();
    let h = crate::hash::fnv1a64(
        container_id
            .bytes()
            .chain([b'/'])
            .chain(ifname.bytes())
            .chain([b'/'])
            .chain(salt.bytes()),
    );
    format!("veth{:011x}", h >> 20)
}

/// The prefix of every [`attachment_mark`].
pub const MARK_PREFIX: &str = "headcni:v1:";

/// The ownership mark ADD puts on an attachment's host veth as its alias (`IFLA_IFALIAS`,
/// `ip link show` prints it after `alias`), and that DEL, CHECK and GC require before they
/// delete or accept a host link: `headcni:v1:` followed by the 64 lower-case hex digits of
/// SHA-256 over `<containerID>\r\n<ifname>` (the same `\r\n` join as the IPAM reservation
/// files). 75 bytes whatever the container ID's length (a container ID may be longer than
/// the kernel's alias limit, `IFALIASZ` 256 with the NUL, so it is hashed, not copied). Only a process with `CAP_NET_ADMIN` in the
/// node's network namespace can set or change it. An operator finds a pod's link with
/// `printf '%s\r\n%s' "$CID" eth0 | sha256sum` and `ip -d link show | grep -B1 <digest>`.
pub fn attachment_mark(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let digest = Sha256::new()
        .chain_update(container_id.as_bytes())
        .chain_update(b"\r\n")
        .chain_update(ifname.as_bytes())
        .finalize();
    let mut out = String::with_capacity(MARK_PREFIX.len() + 64);
    out.push_str(MARK_PREFIX);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_valid_and_stable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        // pinned: DEL finds the host end of an attachment made by an older version by this name
        assert_eq!(
            a,
            format!("veth{:011x}", crate::hash::fnv1a64(*b"abc/eth0") >> 20)
        );
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(validate_ifname(&a).is_ok());
    }

    #[test]
    fn alternative_names_and_marks() {
        // the colliding pair of issue 8
        let (a, b) = ("adv00000016cfeb", "adv00000096aa38");
        assert_eq!(host_veth_name(a, "eth0"), "veth2874cfad024");
        assert_eq!(host_veth_name(b, "eth0"), "veth2874cfad024");
        let alts: Vec<String> = (1..HOST_VETH_NAMES)
            .map(|n| host_veth_alt_name(b, "eth0", n))
            .collect();
        for n in &alts {
            assert!(validate_ifname(n).is_ok() && n.len() == 15, "{n}");
            assert_ne!(n, &host_veth_name(b, "eth0"));
        }
        assert_ne!(alts[0], alts[1]);
        assert_ne!(host_veth_alt_name(a, "eth0", 1), alts[0]);

        let ma = attachment_mark(a, "eth0");
        assert_ne!(ma, attachment_mark(b, "eth0"));
        assert_ne!(ma, attachment_mark(a, "eth1"));
        assert!(ma.starts_with(MARK_PREFIX) && ma.len() == MARK_PREFIX.len() + 64);
        // pinned: `printf 'abc\r\neth0' | sha256sum`
        assert_eq!(
            attachment_mark("abc", "eth0"),
            format!(
                "{MARK_PREFIX}{}",
                "6a80fccff7fbbeebbab285026bc87c61e4c67674df3c59bec57c905b6b7abc00"
            )
        );
        let long = "c".repeat(4096);
        assert_eq!(attachment_mark(&long, "eth0").len(), ma.len());
    }

    #[test]
    fn validation() {
        assert!(BridgeConf::default().validate().is_ok());
        let c = BridgeConf {
            mtu: Some(10),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().code, 7);
        let c = BridgeConf {
            bridge: "a/b".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().code, 7);
        let c: BridgeConf = serde_json::from_str("{}").unwrap();
        assert_eq!(c, BridgeConf::default());
        assert!(
            BridgeConf {
                is_gateway: false,
                is_default_gateway: true,
                ..Default::default()
            }
            .gateway()
        );
    }
}
