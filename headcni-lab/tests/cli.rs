//! The README's main job through the real command line: `headcni lab up` shows a 2-node
//! cluster whose pods reach each other across nodes, `lab status` and `lab exec` work, and
//! `lab down` leaves nothing behind, also after a crash lost the lab's state file.

use std::path::Path;
use std::process::{Command, Output};

use headcni_lab::cluster::{Lab, default_bin_dir};

/// The lab's name: unique to this run (several runs may share the machine).
fn name() -> String {
    format!("e2ecli{}", std::process::id())
}

fn lab(args: &[&str]) -> Output {
    let bin = default_bin_dir().expect("bin dir").join("headcni");
    Command::new(&bin)
        .arg("lab")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Lab::down(&name());
    }
}

fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect()
}

fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{}-", name())))
                .collect()
        })
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&format!("headcni-lab/{}", name())))
            .map(String::from),
    );
    let needle = format!("headcni-lab/{}/", name());
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&needle)
        {
            left.push(format!("process {}", e.file_name().to_string_lossy()));
        }
    }
    if Lab::root(&name()).exists() {
        left.push(Lab::root(&name()).display().to_string());
    }
    left
}

#[test]
fn lab_up_status_exec_down() {
    let lab_name = name();
    let name = lab_name.as_str();
    let _ = Lab::down(name);
    let links_before = host_links();
    let wg_before = Path::new("/run/wireguard")
        .read_dir()
        .map(|d| d.count())
        .ok();
    let _guard = Down;
    let up = lab(&["up", "--name", name]);
    let table = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "lab up failed: {}\n{table}",
        String::from_utf8_lossy(&up.stderr)
    );
    let nodes: Vec<&str> = table.lines().filter(|l| l.starts_with("node-")).collect();
    assert_eq!(nodes.len(), 2, "{table}");
    for n in &nodes {
        assert!(n.contains(" yes ") && n.ends_with("approved"), "{n}");
    }
    assert!(
        nodes[0].contains("100.64.0.1") && nodes[1].contains("100.64.0.2"),
        "{table}"
    );
    let pods: Vec<&str> = table.lines().filter(|l| l.starts_with("pod-")).collect();
    assert_eq!(pods.len(), 4, "{table}");
    for p in &pods {
        assert!(p.contains(" 3/3 ") && p.ends_with("ok"), "{p}");
    }

    let status = lab(&["status", "--name", name]);
    assert!(status.status.success());
    assert_eq!(
        String::from_utf8_lossy(&status.stdout)
            .lines()
            .filter(|l| l.starts_with("pod-") && l.contains(" 3/3 "))
            .count(),
        4
    );
    let exec = lab(&[
        "exec", "--name", name, "pod-1-1", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(exec.status.success());
    assert!(String::from_utf8_lossy(&exec.stdout).contains("10.244.1."));
    let exec = lab(&["exec", "--name", name, "node-2", "--", "ls", "/run"]);
    let run = String::from_utf8_lossy(&exec.stdout);
    assert!(
        run.contains("wireguard") && run.contains("tailscale"),
        "node-2's own /run: {run}"
    );

    // The host is untouched: no new link, the host's /run/wireguard unchanged.
    assert_eq!(host_links(), links_before);
    assert_eq!(
        Path::new("/run/wireguard")
            .read_dir()
            .map(|d| d.count())
            .ok(),
        wg_before
    );

    // A crash loses the state file: down still finds everything by name.
    std::fs::remove_file(Lab::root(name).join("state.json")).expect("remove state");
    let down = lab(&["down", "--name", name]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(leftovers(), Vec::<String>::new());
    assert_eq!(host_links(), links_before);
    let again = lab(&["down", "--name", name]);
    assert!(again.status.success(), "down twice");
}
