//! CNI plugin mode, process wiring only: `headcni` (main plugin) and `headcni-ipam` (IPAM
//! plugin, same binary invoked under that name) on rtnetlink. The protocol itself is
//! [`headcni_plugin`]'s entry point: stdout carries exactly its one result or error JSON;
//! its warnings and any logs go to stderr.

use std::io::Write;

use headcni_netlink::NetlinkNamespaces;
pub use headcni_plugin::{IPAM_TYPE, Role};

/// Runs one CNI invocation of `role` with the process environment and stdin on rtnetlink:
/// writes [`headcni_plugin::Answer::warnings`] to stderr (`headcni: <message>`) and the
/// answer to stdout, and returns the exit code.
pub fn run(role: Role) -> i32 {
    let answer = headcni_plugin::Plugin::new(role, &NetlinkNamespaces)
        .call_reader(std::env::vars_os(), std::io::stdin().lock());
    for w in &answer.warnings {
        eprintln!("headcni: {w}");
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&answer.stdout);
    let _ = out.flush();
    answer.exit_code
}
