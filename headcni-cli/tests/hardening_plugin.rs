//! Issue 8, the plugin's entry point: `ipam.type` never escapes `CNI_PATH` (item 1), a FIFO
//! as `CNI_NETNS` never hangs (item 6), stdin is capped (item 7), a delegated IPAM plugin is
//! bounded in time and output (item 8), and wrong input is refused with the spec's codes
//! (item 9). Every invocation runs the built `headcni` as a runtime does, inside a per-test
//! node namespace, under a watchdog (a hang fails the test instead of blocking it) and an
//! address-space limit (a runaway allocation fails the test instead of the machine).

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{CniEnv, Net, Out};
use headcni_core::plugin::testing::FakeNs;
use headcni_plugin::{Role, entry};
use serde_json::{Value, json};

/// Address-space limit of each plugin run (and of what it execs): 2 GiB.
const AS_LIMIT: u64 = 2 << 30;

/// The six `CNI_*` pairs of `env`, as a runtime sets them.
fn pairs(env: &CniEnv) -> Vec<(String, OsString)> {
    [
        ("CNI_COMMAND", &env.command),
        ("CNI_CONTAINERID", &env.container_id),
        ("CNI_NETNS", &env.netns),
        ("CNI_IFNAME", &env.ifname),
        ("CNI_ARGS", &env.args),
        ("CNI_PATH", &env.path),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), OsString::from(v)))
    .collect()
}

/// Runs `headcni` in `net`'s node namespace with exactly `vars`, `stdin`, the working
/// directory `<tmp>/cwd`, [`AS_LIMIT`], and a watchdog: if it has not exited after `limit`,
/// it is killed and the test fails.
fn run_bounded(net: &Net, vars: &[(String, OsString)], stdin: &[u8], limit: Duration) -> Out {
    // `HEADCNI_TEST_EXE` runs these checks against another build (e.g. the code before the
    // fix, to see them fail).
    let exe = std::env::var_os("HEADCNI_TEST_EXE")
        .map_or_else(|| PathBuf::from(common::EXE), PathBuf::from);
    run_binary(net, &exe, vars, stdin, limit)
}

/// [`run_bounded`] with another binary (e.g. the `headcni-ipam` symlink).
fn run_binary(
    net: &Net,
    binary: &Path,
    vars: &[(String, OsString)],
    stdin: &[u8],
    limit: Duration,
) -> Out {
    let cwd = net.tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir cwd");
    let (mut cmd, node_file) = net.node.command(binary);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.env_remove("HEADCNI_LOG")
        .current_dir(&cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn headcni");
    drop(node_file);
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &stdin);
    });
    let done = common::eventually(limit, || !matches!(child.try_wait(), Ok(None)));
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("headcni did not answer within {limit:?} (vars {vars:?})");
    }
    let _ = writer.join();
    common::finish(child, started)
}

fn run(net: &Net, env: &CniEnv, conf: &Value) -> Out {
    run_bounded(
        net,
        &pairs(env),
        conf.to_string().as_bytes(),
        Duration::from_secs(30),
    )
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

// ---------------------------------------------------------------------------------------
// Item 1: ipam.type escapes CNI_PATH
// ---------------------------------------------------------------------------------------

#[test]
fn ipam_type_never_runs_a_binary_outside_cni_path() {
    let net = Net::new("h1esc", 180);
    let pod = net.pod("pod");
    // The planted "plugin": outside CNI_PATH; it leaves a marker when run.
    let outside = net.tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir outside");
    let marker = net.tmp.path().join("marker");
    let evil = outside.join("evil");
    write_script(
        &evil,
        &format!(
            "touch {}\necho '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.123.180.9/24\"}}]}}'",
            marker.display()
        ),
    );
    std::os::unix::fs::symlink(&evil, net.bin_dir().join("linked")).expect("symlink");
    let up = "../".repeat(net.bin_dir().components().count() + 2);
    let traversal = format!("{up}{}", evil.display().to_string().trim_start_matches('/'));
    let cases = [
        ("../outside/evil", 7),
        (traversal.as_str(), 7),
        (evil.to_str().expect("utf-8 path"), 7),
        // a symlink in the CNI_PATH directory pointing out of it: not a config error, a
        // refused plugin (code 105)
        ("linked", 105),
    ];
    for (ipam_type, code) in cases {
        let mut conf = net.conf("1.0.0");
        conf["ipam"] = json!({"type": ipam_type});
        let add = run(
            &net,
            &CniEnv::attach("ADD", "cid-esc", &pod.path_str(), "eth0", &net.cni_path()),
            &conf,
        );
        add.err_code(code, &format!("ADD with ipam.type {ipam_type:?}"));
        let del = run(
            &net,
            &CniEnv::attach("DEL", "cid-esc", &pod.path_str(), "eth0", &net.cni_path()),
            &conf,
        );
        del.err_code(code, &format!("DEL with ipam.type {ipam_type:?}"));
        assert!(
            !marker.exists(),
            "ipam.type {ipam_type:?} ran a binary outside CNI_PATH"
        );
    }
    // Sanity: the same script inside CNI_PATH does run (so the marker check can fire).
    std::fs::copy(&evil, net.bin_dir().join("inside")).expect("copy");
    let mut conf = net.conf("1.0.0");
    conf["ipam"] = json!({"type": "inside"});
    let _ = run(
        &net,
        &CniEnv::attach("DEL", "cid-esc", &pod.path_str(), "eth0", &net.cni_path()),
        &conf,
    );
    assert!(marker.exists(), "a plugin inside CNI_PATH must still run");
}

// ---------------------------------------------------------------------------------------
// Item 6: CNI_NETNS naming a FIFO
// ---------------------------------------------------------------------------------------

#[test]
fn a_fifo_as_cni_netns_never_hangs() {
    let net = Net::new("h1fifo", 181);
    let fifo = net.tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let netns = fifo.display().to_string();
    let conf = net.conf("1.0.0");
    let env = |verb: &str| CniEnv::attach(verb, "cid-fifo", &netns, "eth0", &net.cni_path());
    run(&net, &env("ADD"), &conf).err_code(3, "ADD with a FIFO netns");
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns}],
                                 "ips": [{"address": "10.123.181.2/24", "interface": 0}]});
    run(&net, &env("CHECK"), &check).err_code(3, "CHECK with a FIFO netns");
    // DEL tolerates a missing (here: unusable) namespace.
    run(&net, &env("DEL"), &conf).ok("DEL with a FIFO netns");
}

// ---------------------------------------------------------------------------------------
// Item 7: stdin cap
// ---------------------------------------------------------------------------------------

#[test]
fn oversized_stdin_is_refused_with_code_6() {
    let net = Net::new("h1big", 182);
    let pod = net.pod("pod");
    let cap = headcni_core::cni::MAX_STDIN_BYTES;
    // A valid configuration padded past the cap with tiny array items.
    let mut conf = net.conf("1.0.0").to_string();
    conf.pop();
    conf.push_str(",\"pad\":[");
    while conf.len() < cap + 16 {
        conf.push_str("0,");
    }
    conf.push_str("0]}");
    for env in [
        CniEnv::global("VERSION", ""),
        CniEnv::attach("ADD", "cid-big", &pod.path_str(), "eth0", &net.cni_path()),
    ] {
        let out = run_bounded(&net, &pairs(&env), conf.as_bytes(), Duration::from_secs(60));
        let v = out.err_code(6, &format!("{} with {} bytes", env.command, conf.len()));
        assert!(
            v["msg"].as_str().is_some_and(|m| m.contains("too large")),
            "{out}"
        );
    }
    assert!(net.reservations().is_empty(), "nothing may be reserved");
}

// ---------------------------------------------------------------------------------------
// Item 8: delegated IPAM time and output limits
// ---------------------------------------------------------------------------------------

#[test]
fn a_hanging_delegate_is_killed_after_the_configured_timeout() {
    let net = Net::new("h1slow", 183);
    let pod = net.pod("pod");
    let pidfile = net.tmp.path().join("sleeper.pid");
    write_script(
        &net.bin_dir().join("sleeper"),
        &format!("echo $$ > {}\nexec sleep 1000", pidfile.display()),
    );
    /// Kills a delegate the plugin under test left alive (old code), also on panic.
    struct KillLeftover(PathBuf);
    impl Drop for KillLeftover {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                // only if that pid is still our `sleep 1000` (pids are reused)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"sleep\x001000"))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _leftover = KillLeftover(pidfile.clone());
    let mut conf = net.conf("1.0.0");
    conf["ipam"] = json!({"type": "sleeper"});
    conf["delegateTimeoutSeconds"] = json!(1);
    let env = CniEnv::attach("ADD", "cid-slow", &pod.path_str(), "eth0", &net.cni_path());
    let out = run(&net, &env, &conf);
    let v = out.err_code(11, "ADD with a hanging delegate");
    assert!(
        v["msg"].as_str().is_some_and(|m| m.contains("timed out")),
        "{out}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("the delegate ran")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH),
        "the timed-out delegate {pid} is still alive"
    );
    // Out of range → code 7.
    for bad in [json!(0), json!(601), json!("1")] {
        conf["delegateTimeoutSeconds"] = bad.clone();
        run(&net, &env, &conf).err_code(7, &format!("delegateTimeoutSeconds {bad}"));
    }
}

#[test]
fn a_delegate_with_endless_output_is_cut_off() {
    let net = Net::new("h1loud", 184);
    let pod = net.pod("pod");
    write_script(&net.bin_dir().join("loud"), "exec yes");
    let mut conf = net.conf("1.0.0");
    conf["ipam"] = json!({"type": "loud"});
    let env = CniEnv::attach("ADD", "cid-loud", &pod.path_str(), "eth0", &net.cni_path());
    let out = run(&net, &env, &conf);
    let v = out.err_code(6, "ADD with an endless delegate");
    assert!(
        v["msg"]
            .as_str()
            .is_some_and(|m| m.contains("too much output")),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// Item 9: wrong accepted input
// ---------------------------------------------------------------------------------------

#[test]
fn empty_or_relative_data_dir_is_code_7() {
    let net = Net::new("h1ddir", 185);
    let pod = net.pod("pod");
    for dir in ["", "relative/store"] {
        let mut conf = net.conf("1.0.0");
        conf["ipam"]["dataDir"] = json!(dir);
        let env = CniEnv::attach("ADD", "cid-ddir", &pod.path_str(), "eth0", &net.cni_path());
        run(&net, &env, &conf).err_code(7, &format!("ADD with dataDir {dir:?}"));
    }
    let cwd = net.tmp.path().join("cwd");
    let left: Vec<_> = std::fs::read_dir(&cwd).expect("cwd").flatten().collect();
    assert!(
        left.is_empty(),
        "a store was created in the working directory: {left:?}"
    );
}

#[test]
fn an_overlong_network_name_fails_add_with_7_and_del_succeeds() {
    let net = Net::new("h1name", 186);
    let pod = net.pod("pod");
    let mut conf = net.conf("1.0.0");
    conf["name"] = json!("n".repeat(300));
    let env =
        |verb: &str| CniEnv::attach(verb, "cid-name", &pod.path_str(), "eth0", &net.cni_path());
    run(&net, &env("ADD"), &conf).err_code(7, "ADD with a 300-byte network name");
    run(&net, &env("DEL"), &conf).ok("DEL with a 300-byte network name");
    // The standalone IPAM plugin (`headcni-ipam` by argv[0]) too.
    let mut ipam = conf["ipam"].clone();
    ipam["cniVersion"] = json!("1.0.0");
    ipam["name"] = conf["name"].clone();
    let mut ipam_conf = conf.clone();
    ipam_conf["type"] = json!("bridge");
    let binary = net.bin_dir().join("headcni-ipam");
    for (verb, code) in [("ADD", Some(7)), ("DEL", None)] {
        let out = run_binary(
            &net,
            &binary,
            &pairs(&env(verb)),
            ipam_conf.to_string().as_bytes(),
            Duration::from_secs(30),
        );
        match code {
            Some(c) => {
                out.err_code(c, &format!("headcni-ipam {verb} with a long name"));
            }
            None => {
                out.ok(&format!("headcni-ipam {verb} with a long name"));
            }
        }
    }
}

#[test]
fn a_non_utf8_cni_ifname_is_code_4() {
    let net = Net::new("h1utf", 187);
    let pod = net.pod("pod");
    let conf = net.conf("1.0.0");
    let mut vars = pairs(&CniEnv::attach(
        "ADD",
        "cid-utf",
        &pod.path_str(),
        "eth0",
        &net.cni_path(),
    ));
    for (k, v) in &mut vars {
        if k == "CNI_IFNAME" {
            *v = OsString::from_vec(b"eth\xff".to_vec());
        }
    }
    let out = run_bounded(
        &net,
        &vars,
        conf.to_string().as_bytes(),
        Duration::from_secs(30),
    );
    let v = out.err_code(4, "ADD with a non-UTF-8 CNI_IFNAME");
    assert!(
        v["msg"].as_str().is_some_and(|m| m.contains("CNI_IFNAME")),
        "{out}"
    );
    assert!(net.reservations().is_empty(), "nothing may be reserved");
    assert!(
        pod.links().iter().all(|l| l["ifname"] == "lo"),
        "a link was created in the pod: {:?}",
        pod.links()
    );
}

#[test]
fn echoed_cni_versions_are_capped() {
    let net = Net::new("h1ver", 188);
    let long = "1".repeat(10_000);
    let version = CniEnv::global("VERSION", "");
    let out = run(&net, &version, &json!({"cniVersion": long}));
    let v = out.ok("VERSION with a 10 kB cniVersion");
    let echoed = v["cniVersion"].as_str().expect("cniVersion");
    assert!(echoed.len() <= 64, "echoed {} bytes", echoed.len());
    // Errors echo the request's version too.
    let pod = net.pod("pod");
    let mut conf = net.conf("1.0.0");
    conf["cniVersion"] = json!(long);
    let out = run(
        &net,
        &CniEnv::attach("ADD", "cid-ver", &pod.path_str(), "eth0", &net.cni_path()),
        &conf,
    );
    let v = out.err_code(6, "ADD with a 10 kB cniVersion");
    assert!(
        v["cniVersion"].as_str().is_some_and(|s| s.len() <= 64),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// The library entry point on the fake backend
// ---------------------------------------------------------------------------------------

fn entry_vars(verb: &str, netns: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", "cid-entry"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", ""),
        ("CNI_PATH", "/nonexistent"),
        ("PATH", "/usr/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn the_entry_point_runs_every_verb_on_the_fake_backend() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = tmp.path().join("data");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "entry", "type": "headcni",
        "daemonSocket": tmp.path().join("no.sock"),
        "ipam": {"type": "headcni-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]], "dataDir": data},
    });
    let ns = FakeNs::default();
    let netns = "/run/netns/fake-pod";
    let add = entry(
        Role::Main,
        entry_vars("ADD", netns),
        conf.to_string().as_bytes(),
        &ns,
    );
    assert_eq!(add.exit_code, 0, "{}", String::from_utf8_lossy(&add.stdout));
    let result: Value = serde_json::from_slice(&add.stdout).expect("one JSON document");
    assert_eq!(result["ips"][0]["address"], "10.9.0.2/24");
    assert!(ns.w().links[netns].contains_key("eth0"));

    let mut check = conf.clone();
    check["prevResult"] = result;
    let out = entry(
        Role::Main,
        entry_vars("CHECK", netns),
        check.to_string().as_bytes(),
        &ns,
    );
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty());

    let out = entry(
        Role::Main,
        entry_vars("DEL", netns),
        check.to_string().as_bytes(),
        &ns,
    );
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b""[..]));
    assert!(ns.w().links.get(netns).is_none_or(|l| l.is_empty()));

    // Errors: exactly one JSON document, the exit status is the code.
    let big = vec![b' '; headcni_core::cni::MAX_STDIN_BYTES + 1];
    for (vars, stdin, code) in [
        (entry_vars("VERSION", ""), big.as_slice(), 6),
        (entry_vars("ADD", "/run/netns/host"), b"{".as_slice(), 6),
        (entry_vars("BOGUS", netns), b"{}".as_slice(), 4),
    ] {
        let out = entry(Role::Main, vars, stdin, &ns);
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(out.exit_code, code);
    }
    // The plugin's own namespace is refused (the fake's host is "<host>").
    let out = entry(
        Role::Main,
        entry_vars("ADD", headcni_core::plugin::testing::HOST),
        conf.to_string().as_bytes(),
        &ns,
    );
    assert_eq!(out.exit_code, 4, "{}", String::from_utf8_lossy(&out.stdout));
}
