//! NetConf parsing (main plugin, IPAM section, results): arbitrary bytes never panic, and
//! whatever parses re-serialises and parses again to the same configuration.
#![no_main]

use headcni_core::cni::{CniResult, NetConf, SUPPORTED_VERSIONS};
use headcni_core::ipam::IpamConf;
use headcni_core::plugin::BridgeConf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = NetConf::<BridgeConf>::parse(data) {
        let _ = p.conf.plugin.validate();
        let again = serde_json::to_vec(&p.conf).expect("a parsed NetConf serialises");
        let q = NetConf::<BridgeConf>::parse(&again).expect("a serialised NetConf parses");
        assert_eq!(p.conf.plugin, q.conf.plugin);
        assert_eq!(p.version, q.version);
        if let Some(ipam) = &p.conf.ipam {
            if let Ok(i) = serde_json::from_value::<IpamConf>(ipam.clone()) {
                let _ = i.range_sets(&p.conf.runtime_config.ip_ranges);
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = CniResult::from_json(&v) {
            for ver in SUPPORTED_VERSIONS {
                let _ = CniResult::from_json(&r.to_json(ver)).expect("a result re-parses in every version");
            }
        }
    }
});
