//! The README's main job: `headcni lab up` builds 3 pods that reach each other and the
//! gateway, `lab status` re-checks, and `lab down` leaves nothing behind (also after a crash:
//! namespaces with the lab's prefix are found by name). One test: the lab has fixed names.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_headcni");

fn lab(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("lab")
        .args(args)
        .output()
        .expect("run headcni lab")
}

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("hclab-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Always tears the lab down, also when an assertion fails.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down"]);
    }
}

#[test]
fn lab_up_status_down() {
    let _ = lab(&["down"]); // a previous crashed run
    let _guard = Down;
    let up = lab(&["up"]);
    let table = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "lab up failed: {}\n{table}",
        String::from_utf8_lossy(&up.stderr)
    );
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("hclab-pod-"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    for row in &rows {
        assert!(
            row.contains("gateway ok") && row.contains("pods 2/2"),
            "{row}"
        );
        assert!(row.contains("10.244.0."), "{row}");
    }
    let mut ns = lab_namespaces();
    ns.sort();
    assert_eq!(
        ns,
        ["hclab-node", "hclab-pod-1", "hclab-pod-2", "hclab-pod-3"]
    );

    let status = lab(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A second `up` refuses instead of building a second lab over the first.
    assert!(!lab(&["up"]).status.success());

    let down = lab(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
    assert!(!Path::new("/run/headcni-lab").exists());
    let status = lab(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("no lab is up"));

    // After a crash (namespaces with the lab's prefix, no state file) `down` still cleans up.
    let name = "hclab-pod-crashed";
    let made = Command::new("ip")
        .args(["netns", "add", name])
        .status()
        .expect("ip netns add");
    assert!(made.success());
    let down = lab(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
}
