//! What kube-proxy needs from the node's bridge, as a decision (no I/O): bridged pod traffic
//! must pass iptables, or kube-proxy's `KUBE-*` rules never see pod → Service traffic that
//! stays on the bridge (a Service backend on the same node, hairpin).
//!
//! That takes the `br_netfilter` module and `net.bridge.bridge-nf-call-iptables = 1` (and
//! `-ip6tables` for IPv6). kube-proxy's iptables proxier did the same at start
//! (kubernetes/kubernetes `pkg/proxy/iptables/proxier.go`, `NewProxier`: `modprobe
//! br-netfilter`, its failure ignored, then the sysctl, a warning when it cannot be set). The sysctl files exist only while the module is
//! loaded; they are per network namespace. `headcni_netlink::bridge_netfilter` observes and
//! acts; `[node] bridge_netfilter = false` turns the whole step off.

/// The module that makes bridged frames pass netfilter (Linux `net/bridge/br_netfilter_hooks.c`).
pub const MODULE: &str = "br_netfilter";
/// `net.bridge.bridge-nf-call-iptables`.
pub const CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
/// `net.bridge.bridge-nf-call-ip6tables`.
pub const CALL_IP6TABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";

/// The two sysctls as read: `Some(true)` for `1`, `Some(false)` for anything else, `None`
/// when the file does not exist (the module is not loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeNetfilterState {
    /// [`CALL_IPTABLES`].
    pub call_iptables: Option<bool>,
    /// [`CALL_IP6TABLES`].
    pub call_ip6tables: Option<bool>,
}

impl BridgeNetfilterState {
    /// The state from the files' text (`None`: missing); only `1` (white space ignored) is on.
    pub fn from_values(iptables: Option<&str>, ip6tables: Option<&str>) -> Self {
        let on = |v: &str| v.trim() == "1";
        BridgeNetfilterState {
            call_iptables: iptables.map(on),
            call_ip6tables: ip6tables.map(on),
        }
    }
}

/// The next step towards the wanted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeNetfilterStep {
    /// Nothing to do (in place, turned off, or nothing more can be tried).
    Done,
    /// `modprobe br_netfilter` (the sysctls are missing and it was not tried yet).
    LoadModule,
    /// Write `1` to these sysctl files.
    Write(Vec<&'static str>),
}

/// The next step: with `enabled` false, [`BridgeNetfilterStep::Done`]; sysctls missing and
/// `module_tried` false: [`BridgeNetfilterStep::LoadModule`]; present but `0`:
/// [`BridgeNetfilterStep::Write`] of those that are off (a missing ip6tables one, IPv6 off,
/// is left alone).
pub fn next_step(
    enabled: bool,
    state: &BridgeNetfilterState,
    module_tried: bool,
) -> BridgeNetfilterStep {
    if !enabled {
        return BridgeNetfilterStep::Done;
    }
    if state.call_iptables.is_none() {
        return if module_tried {
            BridgeNetfilterStep::Done
        } else {
            BridgeNetfilterStep::LoadModule
        };
    }
    let off: Vec<&'static str> = [
        (state.call_iptables, CALL_IPTABLES),
        (state.call_ip6tables, CALL_IP6TABLES),
    ]
    .into_iter()
    .filter(|(v, _)| *v == Some(false))
    .map(|(_, p)| p)
    .collect();
    if off.is_empty() {
        BridgeNetfilterStep::Done
    } else {
        BridgeNetfilterStep::Write(off)
    }
}

/// The readiness warning after the steps were taken (`None` when in place or `enabled` is
/// false). `module_error` is why `modprobe` failed, if it did.
pub fn warning(
    enabled: bool,
    state: &BridgeNetfilterState,
    module_error: Option<&str>,
) -> Option<String> {
    if !enabled || state.call_iptables == Some(true) {
        return None;
    }
    let why = match (state.call_iptables, module_error) {
        (None, Some(e)) => format!("module {MODULE} could not be loaded ({e})"),
        (None, None) => format!("module {MODULE} is not loaded"),
        _ => "net.bridge.bridge-nf-call-iptables could not be set to 1".to_owned(),
    };
    Some(format!(
        "{why}: kube-proxy's iptables rules do not see bridged pod traffic (same-node \
         Service backends, hairpin); load it on the host, or set [node] bridge_netfilter = \
         false if Services are handled otherwise"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(a: Option<&str>, b: Option<&str>) -> BridgeNetfilterState {
        BridgeNetfilterState::from_values(a, b)
    }

    #[test]
    fn steps() {
        let missing = st(None, None);
        assert_eq!(
            next_step(true, &missing, false),
            BridgeNetfilterStep::LoadModule
        );
        assert_eq!(next_step(true, &missing, true), BridgeNetfilterStep::Done);
        assert_eq!(next_step(false, &missing, false), BridgeNetfilterStep::Done);
        assert_eq!(
            next_step(true, &st(Some("0\n"), Some("0\n")), true),
            BridgeNetfilterStep::Write(vec![CALL_IPTABLES, CALL_IP6TABLES])
        );
        assert_eq!(
            next_step(true, &st(Some("1\n"), Some("0")), false),
            BridgeNetfilterStep::Write(vec![CALL_IP6TABLES])
        );
        // IPv6 sysctl missing: only iptables matters.
        assert_eq!(
            next_step(true, &st(Some("1"), None), false),
            BridgeNetfilterStep::Done
        );
        assert_eq!(
            next_step(false, &st(Some("0"), Some("0")), false),
            BridgeNetfilterStep::Done
        );
    }

    #[test]
    fn warnings() {
        assert_eq!(warning(true, &st(Some("1"), None), None), None);
        assert_eq!(warning(false, &st(None, None), Some("x")), None);
        let w = warning(true, &st(None, None), Some("modprobe: FATAL")).unwrap();
        assert!(
            w.starts_with("module br_netfilter could not be loaded (modprobe: FATAL): kube-proxy"),
            "{w}"
        );
        assert!(w.contains("[node] bridge_netfilter = false"));
        let w = warning(true, &st(Some("0"), None), None).unwrap();
        assert!(w.starts_with("net.bridge.bridge-nf-call-iptables could not be set"));
        assert!(
            warning(true, &st(None, None), None)
                .unwrap()
                .starts_with("module br_netfilter is not loaded")
        );
    }
}
