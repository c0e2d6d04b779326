//! A running lab grows and shrinks through the command line (issue 13): `headcni lab
//! add-node` joins a node whose pod reaches every other pod, `lab remove-node N` withdraws
//! node N's route from every peer and leaves the others working, and `lab down` afterwards
//! leaves no namespace, mount, process or file. Small on purpose (3 nodes, then 4, 3, 4).

use std::process::{Command, Output};

use headcni_lab::cluster::{Lab, default_bin_dir};

fn name() -> String {
    format!("e2escale{}", std::process::id())
}

fn lab(args: &[&str]) -> Output {
    let bin = default_bin_dir().expect("bin dir").join("headcni");
    Command::new(&bin)
        .arg("lab")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Lab::down(&name());
    }
}

/// Namespaces, mounts, processes and files of this lab still on the machine.
fn leftovers() -> Vec<String> {
    let prefix = format!("{}-", name());
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    let needle = format!("headcni-lab/{}", name());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&needle))
            .map(String::from),
    );
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&format!("{needle}/"))
        {
            left.push(format!("process {}", e.file_name().to_string_lossy()));
        }
    }
    if Lab::root(&name()).exists() {
        left.push(Lab::root(&name()).display().to_string());
    }
    left
}

/// Node N's table 52 (IPv4), read inside the node.
fn table52(name: &str, node: u32) -> String {
    let out = lab(&[
        "exec",
        "--name",
        name,
        &format!("node-{node}"),
        "--",
        "ip",
        "-4",
        "route",
        "show",
        "table",
        "52",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn add_node_and_remove_node_on_a_running_lab() {
    let lab_name = name();
    let name = lab_name.as_str();
    let _ = Lab::down(name);
    let _guard = Down;
    let up = lab(&["up", "--name", name, "--nodes", "3", "--pods", "1"]);
    assert!(up.status.success(), "lab up: {}", text(&up));

    // Join: node-4 with one pod; the command returns once every pod reaches every pod.
    let add = lab(&["add-node", "--name", name, "--pods", "1"]);
    assert!(add.status.success(), "add-node: {}", text(&add));
    let table = String::from_utf8_lossy(&add.stdout).into_owned();
    let node4 = table
        .lines()
        .find(|l| l.starts_with("node-4 "))
        .unwrap_or_else(|| panic!("no node-4 in {table}"));
    assert!(
        node4.contains(" yes ") && node4.ends_with("approved"),
        "{node4}"
    );
    let pods: Vec<&str> = table.lines().filter(|l| l.starts_with("pod-")).collect();
    assert_eq!(pods.len(), 4, "{table}");
    for p in &pods {
        assert!(p.contains(" 3/3 "), "{p}");
    }
    let lab_state = Lab::load(name).expect("state");
    assert_eq!(
        lab_state.nodes().keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(table52(name, 1).contains("10.244.4.0/24"));

    // Leave: node-2 goes; its route leaves every peer's table 52, the others still reach
    // each other.
    let rm = lab(&["remove-node", "--name", name, "2"]);
    assert!(rm.status.success(), "remove-node: {}", text(&rm));
    assert!(!std::path::Path::new(&format!("/run/netns/{name}-node-2")).exists());
    for n in [1, 3, 4] {
        let t = table52(name, n);
        assert!(!t.contains("10.244.2.0/24"), "node-{n}: {t}");
    }
    let lab_state = Lab::load(name).expect("state");
    assert_eq!(
        lab_state.nodes().keys().copied().collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    lab_state
        .wait_full_mesh(std::time::Duration::from_secs(20))
        .expect("the other pods still reach each other");
    let again = lab(&["remove-node", "--name", name, "2"]);
    assert!(!again.status.success(), "removing node-2 twice");
    assert!(text(&again).contains("no node-2"), "{}", text(&again));

    // The freed index is taken again at once (its underlay veth is gone with it).
    let readd = lab(&["add-node", "--name", name, "--pods", "1"]);
    assert!(readd.status.success(), "add-node again: {}", text(&readd));
    assert_eq!(
        Lab::load(name)
            .expect("state")
            .nodes()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    let down = lab(&["down", "--name", name]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(leftovers(), Vec::<String>::new());
}
