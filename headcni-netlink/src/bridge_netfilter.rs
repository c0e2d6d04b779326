//! `br_netfilter` and `net.bridge.bridge-nf-call-ip(6)tables` for kube-proxy, in the calling
//! thread's network namespace (the decisions are `headcni_core::node::bridge_netfilter`).
//!
//! The module is loaded with `modprobe br_netfilter` (bounded: 10 s) only when the sysctls are
//! missing; the sysctls are per network namespace, the module is the kernel's.

use std::io;
use std::path::Path;
use std::time::Duration;

use headcni_core::node::bridge_netfilter::{
    BridgeNetfilterState, BridgeNetfilterStep, CALL_IP6TABLES, CALL_IPTABLES, MODULE, next_step,
    warning,
};

use crate::process;

/// How long `modprobe` may take.
const MODPROBE_BUDGET: Duration = Duration::from_secs(10);

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The two sysctls of the calling thread's network namespace (a file that cannot be read
/// counts as missing).
pub fn state() -> BridgeNetfilterState {
    BridgeNetfilterState::from_values(
        read(CALL_IPTABLES).as_deref(),
        read(CALL_IP6TABLES).as_deref(),
    )
}

/// Takes the steps of [`next_step`] (at most one `modprobe`, then the sysctl writes) and
/// returns the readiness warning of [`warning`] for what is left, `None` when in place or
/// `enabled` is false. Never fails: what cannot be done is the warning.
pub fn ensure(enabled: bool) -> Option<String> {
    let mut module_tried = false;
    let mut module_error = None;
    let mut write_error: Option<io::Error> = None;
    // At most: LoadModule, Write, Done.
    for _ in 0..3 {
        match next_step(enabled, &state(), module_tried) {
            BridgeNetfilterStep::Done => break,
            BridgeNetfilterStep::LoadModule => {
                module_tried = true;
                match process::run("modprobe", &[MODULE], None, MODPROBE_BUDGET, 4096) {
                    Ok(out) if out.success => {}
                    Ok(out) => module_error = Some(out.reason()),
                    Err(e) => module_error = Some(e.to_string()),
                }
            }
            BridgeNetfilterStep::Write(paths) => {
                if write_error.is_some() {
                    break;
                }
                for p in paths {
                    if let Err(e) = std::fs::write(Path::new(p), "1") {
                        tracing::debug!("write {p}: {e}");
                        write_error = Some(e);
                    }
                }
            }
        }
    }
    warning(enabled, &state(), module_error.as_deref())
}
