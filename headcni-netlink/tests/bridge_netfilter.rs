//! `headcni_netlink::bridge_netfilter::ensure` in a network namespace of its own
//! (`hcbnf-<tag>-<pid>`, run as root): the per-namespace `bridge-nf-call-ip(6)tables` sysctls
//! switched on when enabled, left alone when not. Needs `br_netfilter` loaded (or built in) on
//! the machine: the sysctls exist only then.

use std::path::Path;

use headcni_core::node::bridge_netfilter::{CALL_IP6TABLES, CALL_IPTABLES};
use headcni_netlink::bridge_netfilter;

fn ns(tag: &str) -> headcni_testkit::Ns {
    headcni_testkit::Ns::named(&format!("hcbnf-{tag}-{}", std::process::id()))
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p)
        .expect("read sysctl")
        .trim()
        .to_owned()
}

#[test]
fn ensure_switches_the_sysctls_on_in_its_namespace_only_when_enabled() {
    assert!(
        Path::new(CALL_IPTABLES).exists(),
        "br_netfilter is not loaded on this machine: `modprobe br_netfilter` first"
    );
    let n = ns("on");
    let host_before = read(CALL_IPTABLES);
    let (off_kept, warn_off, after, warn_on) = n.run(|| {
        std::fs::write(CALL_IPTABLES, "0").unwrap();
        std::fs::write(CALL_IP6TABLES, "0").unwrap();
        let warn_off = bridge_netfilter::ensure(false);
        let off_kept = (read(CALL_IPTABLES), read(CALL_IP6TABLES));
        let warn_on = bridge_netfilter::ensure(true);
        let after = (read(CALL_IPTABLES), read(CALL_IP6TABLES));
        (off_kept, warn_off, after, warn_on)
    });
    assert_eq!(off_kept, ("0".into(), "0".into()), "disabled: left alone");
    assert_eq!(warn_off, None);
    assert_eq!(after, ("1".into(), "1".into()));
    assert_eq!(warn_on, None, "in place: no readiness warning");
    assert_eq!(
        read(CALL_IPTABLES),
        host_before,
        "the host's namespace is untouched"
    );
    assert_eq!(n.run(bridge_netfilter::state).call_iptables, Some(true));
}
