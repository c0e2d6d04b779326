//! The plugin binary stays small (it is exec'ed once per CNI operation): the entry point's
//! crate links neither the node daemon nor its Kubernetes/HTTP stack nor rtnetlink (the
//! namespace backend is the caller's).

use std::process::Command;

#[test]
fn the_entry_point_links_no_daemon_kube_http_or_rtnetlink() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-q",
            "-p",
            "headcni-plugin",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(tree.contains("headcni-ipam"), "{tree}");
    for crate_name in [
        "headcni-cli",
        "headcni-headscale",
        "headcni-netlink",
        "headcni-node",
        "kube",
        "k8s-openapi",
        "reqwest",
        "hyper",
        "rtnetlink",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(crate_name)),
            "headcni-plugin depends on {crate_name}:\n{tree}"
        );
    }
}
