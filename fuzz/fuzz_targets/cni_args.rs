//! CNI_ARGS and the CNI environment: arbitrary strings never panic; errors are always code 4.
#![no_main]

use headcni_core::cni::{CniArgs, CniEnv};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    args: String,
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    path: String,
}

fuzz_target!(|i: Input| {
    if let Err(e) = CniArgs::parse(&i.args) {
        assert_eq!(e.code, 4);
    }
    let vars = [
        ("CNI_COMMAND", i.command.as_str()),
        ("CNI_CONTAINERID", i.container_id.as_str()),
        ("CNI_NETNS", i.netns.as_str()),
        ("CNI_IFNAME", i.ifname.as_str()),
        ("CNI_ARGS", i.args.as_str()),
        ("CNI_PATH", i.path.as_str()),
    ];
    match CniEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))) {
        Ok(env) => {
            if env.command.is_attachment_verb() {
                assert!(headcni_core::cni::validate_ifname(env.ifname()).is_ok());
                assert!(headcni_core::cni::is_valid_id(env.container_id()));
            }
        }
        Err(e) => assert_eq!(e.code, 4),
    }
});
