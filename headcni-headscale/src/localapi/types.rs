//! Tailscale LocalAPI JSON types with Go field names (no json tags in Go ⇒ PascalCase keys;
//! `ID`, `TailscaleIPs`, `DNSName`, …). Sources: tailscale/tailscale `ipn/ipnstate/ipnstate.go`,
//! `ipn/prefs.go`, `ipn/backend.go`, `types/opt/bool.go`, `types/preftype/netfiltermode.go`
//! (v1.102.3).

use std::collections::BTreeMap;
use std::fmt;

use ipnetwork::IpNetwork;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::Secret;
use crate::serde_util::de_null_default;

/// Go `opt.Bool`: JSON `true`, `false` or `null` (unset). Decoding also accepts the strings
/// `"true"`, `"false"` and `""`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptBool {
    /// `null`.
    #[default]
    Unset,
    /// `true`.
    True,
    /// `false`.
    False,
}

impl OptBool {
    /// `Some(b)` when set.
    pub fn get(self) -> Option<bool> {
        match self {
            OptBool::Unset => None,
            OptBool::True => Some(true),
            OptBool::False => Some(false),
        }
    }
}

impl From<bool> for OptBool {
    fn from(b: bool) -> Self {
        if b { OptBool::True } else { OptBool::False }
    }
}

impl Serialize for OptBool {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.get() {
            None => s.serialize_none(),
            Some(b) => s.serialize_bool(b),
        }
    }
}

impl<'de> Deserialize<'de> for OptBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            B(bool),
            S(String),
            Null(()),
        }
        Ok(match Option::<Repr>::deserialize(d)? {
            None | Some(Repr::Null(())) => OptBool::Unset,
            Some(Repr::B(b)) => b.into(),
            Some(Repr::S(s)) => match s.as_str() {
                "true" => OptBool::True,
                "false" => OptBool::False,
                "" | "unset" => OptBool::Unset,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "invalid opt.Bool {other:?}"
                    )));
                }
            },
        })
    }
}

/// `preftype.NetfilterMode`, an integer on the wire: 0 off, 1 nodivert, 2 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum NetfilterMode {
    /// 0: tailscaled installs no netfilter rules.
    #[default]
    Off,
    /// 1: rules, but no jumps from the built-in chains.
    NoDivert,
    /// 2: full netfilter management (the Linux default).
    On,
    /// Any other value, preserved.
    Other(i64),
}

impl From<i64> for NetfilterMode {
    fn from(v: i64) -> Self {
        match v {
            0 => NetfilterMode::Off,
            1 => NetfilterMode::NoDivert,
            2 => NetfilterMode::On,
            o => NetfilterMode::Other(o),
        }
    }
}

impl From<NetfilterMode> for i64 {
    fn from(m: NetfilterMode) -> i64 {
        match m {
            NetfilterMode::Off => 0,
            NetfilterMode::NoDivert => 1,
            NetfilterMode::On => 2,
            NetfilterMode::Other(o) => o,
        }
    }
}

/// `ipn.Prefs` as returned by `GET /localapi/v0/prefs` (private keys stripped). Fields HeadCNI
/// does not model are kept in [`Prefs::other`] so a read-modify-write never drops them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// `ControlURL`: the coordination server (Headscale) URL.
    #[serde(rename = "ControlURL", deserialize_with = "de_null_default")]
    pub control_url: String,
    /// `RouteAll`: accept subnet routes advertised by other nodes (`--accept-routes`).
    #[serde(rename = "RouteAll", deserialize_with = "de_null_default")]
    pub route_all: bool,
    /// `CorpDNS`: accept the tailnet's DNS configuration (`--accept-dns`).
    #[serde(rename = "CorpDNS", deserialize_with = "de_null_default")]
    pub corp_dns: bool,
    /// `WantRunning`.
    #[serde(rename = "WantRunning", deserialize_with = "de_null_default")]
    pub want_running: bool,
    /// `ShieldsUp`: refuse incoming connections.
    #[serde(rename = "ShieldsUp", deserialize_with = "de_null_default")]
    pub shields_up: bool,
    /// `AdvertiseTags`.
    #[serde(rename = "AdvertiseTags", deserialize_with = "de_null_default")]
    pub advertise_tags: Vec<String>,
    /// `Hostname` override.
    #[serde(rename = "Hostname", deserialize_with = "de_null_default")]
    pub hostname: String,
    /// `AdvertiseRoutes` (subnet routes and exit routes `0.0.0.0/0`, `::/0`).
    #[serde(rename = "AdvertiseRoutes", deserialize_with = "de_null_default")]
    pub advertise_routes: Vec<IpNetwork>,
    /// `NoSNAT`: do not masquerade traffic forwarded to advertised subnets (Linux).
    #[serde(rename = "NoSNAT", deserialize_with = "de_null_default")]
    pub no_snat: bool,
    /// `NoStatefulFiltering` (opt.Bool).
    #[serde(rename = "NoStatefulFiltering")]
    pub no_stateful_filtering: OptBool,
    /// `NetfilterMode` (integer).
    #[serde(rename = "NetfilterMode", deserialize_with = "de_null_default")]
    pub netfilter_mode: NetfilterMode,
    /// Every other field, untouched (`ExitNodeID`, `Config`, …).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `ipn.MaskedPrefs` for `PATCH /localapi/v0/prefs`: only the fields set here are sent, each
/// with its `<Field>Set: true`; lists replace the stored list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskedPrefs {
    /// `ControlURL`.
    pub control_url: Option<String>,
    /// `RouteAll`.
    pub route_all: Option<bool>,
    /// `CorpDNS`.
    pub corp_dns: Option<bool>,
    /// `WantRunning`.
    pub want_running: Option<bool>,
    /// `AdvertiseTags` (replaces).
    pub advertise_tags: Option<Vec<String>>,
    /// `Hostname`.
    pub hostname: Option<String>,
    /// `AdvertiseRoutes` (replaces; every prefix must be masked).
    pub advertise_routes: Option<Vec<IpNetwork>>,
    /// `NoSNAT`.
    pub no_snat: Option<bool>,
    /// `NoStatefulFiltering`.
    pub no_stateful_filtering: Option<OptBool>,
    /// `NetfilterMode`.
    pub netfilter_mode: Option<NetfilterMode>,
}

impl MaskedPrefs {
    /// True when no field is set (the PATCH would be a no-op).
    pub fn is_empty(&self) -> bool {
        *self == MaskedPrefs::default()
    }
}

impl Serialize for MaskedPrefs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        macro_rules! field {
            ($opt:expr, $name:literal) => {
                if let Some(v) = &$opt {
                    m.serialize_entry($name, v)?;
                    m.serialize_entry(concat!($name, "Set"), &true)?;
                }
            };
        }
        field!(self.control_url, "ControlURL");
        field!(self.route_all, "RouteAll");
        field!(self.corp_dns, "CorpDNS");
        field!(self.want_running, "WantRunning");
        field!(self.advertise_tags, "AdvertiseTags");
        field!(self.hostname, "Hostname");
        field!(self.advertise_routes, "AdvertiseRoutes");
        field!(self.no_snat, "NoSNAT");
        field!(self.no_stateful_filtering, "NoStatefulFiltering");
        field!(self.netfilter_mode, "NetfilterMode");
        m.end()
    }
}

/// `ipn.Options` for `POST /localapi/v0/start`: `UpdatePrefs` **replaces all stored prefs**
/// except the persisted identity, so every field must be explicit.
#[derive(Clone, Serialize)]
pub struct StartOptions {
    /// Pre-auth key (not a pref); empty when the node already has state.
    #[serde(rename = "AuthKey", serialize_with = "ser_opt_secret")]
    pub auth_key: Option<Secret>,
    /// The complete prefs.
    #[serde(rename = "UpdatePrefs")]
    pub update_prefs: Prefs,
}

impl fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartOptions")
            .field("auth_key", &self.auth_key)
            .field("update_prefs", &self.update_prefs)
            .finish()
    }
}

fn ser_opt_secret<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_ref().map(|k| k.expose()).unwrap_or(""))
}

/// `ipnstate.PeerStatus` (also used for `Self`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PeerStatus {
    /// `ID` (`StableNodeID`): with Headscale the decimal node id.
    #[serde(rename = "ID", deserialize_with = "de_null_default")]
    pub id: String,
    /// `NodeID` (int64).
    #[serde(rename = "NodeID", deserialize_with = "de_null_default")]
    pub node_id: i64,
    /// `PublicKey`: `nodekey:<hex>` (= Headscale `nodeKey`).
    #[serde(rename = "PublicKey", deserialize_with = "de_null_default")]
    pub public_key: String,
    /// `HostName`.
    #[serde(rename = "HostName", deserialize_with = "de_null_default")]
    pub host_name: String,
    /// `DNSName`.
    #[serde(rename = "DNSName", deserialize_with = "de_null_default")]
    pub dns_name: String,
    /// `TailscaleIPs`.
    #[serde(rename = "TailscaleIPs", deserialize_with = "de_null_default")]
    pub tailscale_ips: Vec<std::net::IpAddr>,
    /// `AllowedIPs` (omitempty).
    #[serde(
        rename = "AllowedIPs",
        deserialize_with = "de_null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_ips: Vec<IpNetwork>,
    /// `PrimaryRoutes` (omitempty): routes this node serves as primary.
    #[serde(
        rename = "PrimaryRoutes",
        deserialize_with = "de_null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub primary_routes: Vec<IpNetwork>,
    /// `Online`.
    #[serde(rename = "Online", deserialize_with = "de_null_default")]
    pub online: bool,
    /// `Tags` (omitempty): the node's ACL tags; empty for a user-owned node.
    #[serde(rename = "Tags", deserialize_with = "de_null_default")]
    pub tags: Vec<String>,
}

/// `ipnstate.Status` from `GET /localapi/v0/status[?peers=false]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Status {
    /// `Version`.
    #[serde(rename = "Version", deserialize_with = "de_null_default")]
    pub version: String,
    /// `BackendState`: `NoState`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`, `Starting`,
    /// `Running`.
    #[serde(rename = "BackendState", deserialize_with = "de_null_default")]
    pub backend_state: String,
    /// `HaveNodeKey` (omitempty): false ⇒ fresh state, needs `login-interactive` after `start`.
    #[serde(rename = "HaveNodeKey", deserialize_with = "de_null_default")]
    pub have_node_key: bool,
    /// `AuthURL`: the URL control handed out for an interactive login, empty otherwise
    /// (tailscale `ipn/ipnstate/ipnstate.go`). Never logged: it lets anyone authorize the node.
    #[serde(rename = "AuthURL", deserialize_with = "de_null_default")]
    pub auth_url: String,
    /// `TailscaleIPs`.
    #[serde(rename = "TailscaleIPs", deserialize_with = "de_null_default")]
    pub tailscale_ips: Vec<std::net::IpAddr>,
    /// `Self` (`null` before login).
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    /// `Health` warnings.
    #[serde(rename = "Health", deserialize_with = "de_null_default")]
    pub health: Vec<String>,
    /// `Peer`, keyed by `nodekey:<hex>` (absent/null with `?peers=false`).
    #[serde(rename = "Peer", deserialize_with = "de_null_default")]
    pub peer: BTreeMap<String, PeerStatus>,
    /// `MagicDNSSuffix`: the tailnet's MagicDNS suffix, e.g. `tailnet.example.com` (empty
    /// before login; tailscale `ipn/ipnstate/ipnstate.go`).
    #[serde(rename = "MagicDNSSuffix", deserialize_with = "de_null_default")]
    pub magic_dns_suffix: String,
    /// `CurrentTailnet` (`null` before login).
    #[serde(rename = "CurrentTailnet")]
    pub current_tailnet: Option<TailnetStatus>,
}

/// `ipnstate.TailnetStatus` (`Status.CurrentTailnet`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct TailnetStatus {
    /// `Name`: the tailnet's name.
    #[serde(rename = "Name", deserialize_with = "de_null_default")]
    pub name: String,
    /// `MagicDNSSuffix`.
    #[serde(rename = "MagicDNSSuffix", deserialize_with = "de_null_default")]
    pub magic_dns_suffix: String,
    /// `MagicDNSEnabled`: control's `DNSConfig.Proxied`.
    #[serde(rename = "MagicDNSEnabled", deserialize_with = "de_null_default")]
    pub magic_dns_enabled: bool,
}

impl Status {
    /// The MagicDNS suffix without a trailing dot: `CurrentTailnet.MagicDNSSuffix`, else
    /// `MagicDNSSuffix`; `None` when both are empty.
    pub fn magic_dns_suffix(&self) -> Option<String> {
        let t = self
            .current_tailnet
            .as_ref()
            .map(|t| t.magic_dns_suffix.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.magic_dns_suffix);
        let t = t.trim_end_matches('.');
        (!t.is_empty()).then(|| t.to_owned())
    }

    /// `BackendState == "Running"`.
    pub fn is_running(&self) -> bool {
        self.backend_state == "Running"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_dns_suffix_prefers_current_tailnet_and_drops_the_dot() {
        let s: Status = serde_json::from_value(serde_json::json!({
            "MagicDNSSuffix": "old.example.",
            "CurrentTailnet": {"Name": "t", "MagicDNSSuffix": "tailnet.lab.", "MagicDNSEnabled": true}
        }))
        .unwrap();
        assert_eq!(s.magic_dns_suffix().as_deref(), Some("tailnet.lab"));
        let s: Status = serde_json::from_value(
            serde_json::json!({"MagicDNSSuffix": "x.y", "CurrentTailnet": null}),
        )
        .unwrap();
        assert_eq!(s.magic_dns_suffix().as_deref(), Some("x.y"));
        let s: Status = serde_json::from_value(
            serde_json::json!({"MagicDNSSuffix": "", "CurrentTailnet": null}),
        )
        .unwrap();
        assert_eq!(s.magic_dns_suffix(), None);
    }

    #[test]
    fn masked_prefs_emit_set_flags_only_for_sent_fields() {
        let m = MaskedPrefs {
            advertise_routes: Some(vec!["10.244.1.0/24".parse().unwrap()]),
            route_all: Some(true),
            no_stateful_filtering: Some(OptBool::True),
            ..Default::default()
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "AdvertiseRoutes": ["10.244.1.0/24"], "AdvertiseRoutesSet": true,
                "RouteAll": true, "RouteAllSet": true,
                "NoStatefulFiltering": true, "NoStatefulFilteringSet": true
            })
        );
    }

    #[test]
    fn prefs_round_trip_keeps_unknown_fields_and_types() {
        let j = serde_json::json!({
            "ControlURL": "https://hs", "RouteAll": false, "ExitNodeID": "", "CorpDNS": true,
            "WantRunning": true, "AdvertiseRoutes": null, "NoSNAT": false,
            "NoStatefulFiltering": null, "NetfilterMode": 2, "Config": {"UserProfile": {}}
        });
        let p: Prefs = serde_json::from_value(j).unwrap();
        assert_eq!(p.netfilter_mode, NetfilterMode::On);
        assert_eq!(p.no_stateful_filtering, OptBool::Unset);
        assert!(p.advertise_routes.is_empty());
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["ExitNodeID"], "");
        assert_eq!(back["NetfilterMode"], 2);
        assert!(back["NoStatefulFiltering"].is_null());
        assert!(back["Config"].is_object());
    }

    #[test]
    fn opt_bool_strings() {
        let b: OptBool = serde_json::from_str("\"true\"").unwrap();
        assert_eq!(b, OptBool::True);
        let b: OptBool = serde_json::from_str("false").unwrap();
        assert_eq!(b, OptBool::False);
    }

    #[test]
    fn start_options_debug_redacts_auth_key() {
        let o = StartOptions {
            auth_key: Some(Secret::new("hskey-auth-abc-verysecret")),
            update_prefs: Prefs::default(),
        };
        assert!(!format!("{o:?}").contains("verysecret"));
        let j = serde_json::to_value(&o).unwrap();
        assert_eq!(j["AuthKey"], "hskey-auth-abc-verysecret");
    }
}
