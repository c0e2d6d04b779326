//! End-to-end tests of the Headscale and tailscaled stand-ins with real namespaces and a real
//! wireguard-go: an underlay namespace with `headscale-standin`, two node namespaces joined by
//! veths to a bridge, each node's `tailscaled-standin` in a private mount namespace with its
//! own tmpfs `/run`. Needs root, `ip`, `ping`, `nft`, `wg`, `nsenter`, `wireguard-go`.

#[path = "../../headcni-headscale/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use headcni_netlink::netns;
use headcni_testkit::netns::{self as tk_netns, Target, enter_on_exec};
use headcni_testkit::{Exchange, Ns};
use serde_json::{Value, json};

const HS_ADDR: &str = "10.98.0.1:8080";

/// A child process: SIGTERM on drop, then SIGKILL.
struct Proc {
    child: Option<Child>,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM and wait (≤ 10 s); returns the exit status code.
    fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        eprintln!("{} did not stop on SIGTERM", self.name);
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_out(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    let out = Command::new(full[0]).args(&full[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Raw HTTP/1.1 over a stream; returns (status, body).
fn http<S: Read + Write>(mut s: S, head: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// A LocalAPI request with the Go client's Host header.
fn localapi(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let head = format!("{method} /localapi/v0/{path} HTTP/1.1\r\nHost: local-tailscaled.sock");
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let (st, text) = http(s, &head, &b);
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A Headscale REST request from inside the underlay namespace; records it as an
/// [`Exchange`] for OpenAPI validation.
fn rest(
    u: &Path,
    key: &str,
    method: &str,
    path: &str,
    template: Option<&'static str>,
    body: Option<Value>,
) -> Exchange {
    let b = body.clone().map(|b| b.to_string()).unwrap_or_default();
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: {HS_ADDR}\r\nAuthorization: Bearer {key}");
    let (status, text) = netns::run_in_netns(u, move || {
        let s = std::net::TcpStream::connect(HS_ADDR).unwrap();
        http(s, &head, &b)
    })
    .unwrap();
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    Exchange {
        method: method.to_string(),
        path: p,
        query: q,
        operation: template,
        request_json: body,
        request_not_json: false,
        status,
        response_json: serde_json::from_str(&text).ok(),
        injected: false,
    }
}

fn valid(ex: Exchange) -> Value {
    common::spec("0.29.2")
        .validate_exchange(&ex)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ex.status, 200, "{} {}", ex.method, ex.path);
    ex.response_json.unwrap()
}

struct Lab {
    tag: String,
    dir: tempfile::TempDir,
    /// Named network namespaces, deleted on drop (their links go with them).
    _ns: Vec<Ns>,
}

impl Lab {
    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.tag)
    }

    fn path(&self, n: &str) -> PathBuf {
        tk_netns::named_path(&self.ns(n)).unwrap()
    }

    fn new() -> Lab {
        let tag = format!("hcsi{}", std::process::id() % 100_000);
        let mut ns = Vec::new();
        for n in ["u", "a", "b"] {
            let name = format!("{tag}-{n}");
            ns.push(Ns::named(&name));
            run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        let u = format!("{tag}-u");
        run(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &u, "addr", "add", "10.98.0.1/24", "dev", "br0"]);
        run(&["ip", "-n", &u, "link", "set", "br0", "up"]);
        for (i, n) in ["a", "b"].iter().enumerate() {
            let node = format!("{tag}-{n}");
            let host_end = format!("{tag}{n}");
            run(&[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                &node,
            ]);
            run(&["ip", "link", "set", &host_end, "netns", &u]);
            run(&[
                "ip", "-n", &u, "link", "set", &host_end, "master", "br0", "up",
            ]);
            let addr = format!("10.98.0.{}/24", i + 2);
            run(&["ip", "-n", &node, "addr", "add", &addr, "dev", "eth0"]);
            run(&["ip", "-n", &node, "link", "set", "eth0", "up"]);
        }
        Lab {
            tag,
            dir: tempfile::tempdir().unwrap(),
            _ns: ns,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn headscale(&self) -> Proc {
        let policy = self.file("policy.json");
        std::fs::write(&policy, r#"{"autoApprovers": {"routes": {}}}"#).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_headscale-standin"));
        let fd = enter_on_exec(&mut cmd, &Target::net(self.path("u"))).unwrap();
        cmd.args(["--listen", HS_ADDR, "--state-file"])
            .arg(self.file("hs.json"))
            .arg("--api-key-file")
            .arg(self.file("api.key"))
            .arg("--preauth-key-file")
            .arg(self.file("pak"))
            .arg("--policy")
            .arg(&policy)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.file("hs.log")).unwrap());
        let p = Proc {
            child: Some(cmd.spawn().unwrap()),
            name: "headscale-standin",
        };
        drop(fd);
        let u = self.path("u");
        wait_for(
            "headscale-standin listening",
            Duration::from_secs(10),
            || {
                netns::run_in_netns(&u, || std::net::TcpStream::connect(HS_ADDR).ok())
                    .ok()
                    .flatten()
            },
        );
        p
    }

    fn tailscaled(&self, n: &str) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailscaled-standin"));
        let fd = enter_on_exec(&mut cmd, &Target::net(self.path(n))).unwrap();
        cmd.arg("--tun=ts0")
            .arg(format!(
                "--socket={}",
                self.file(&format!("{n}.sock")).display()
            ))
            .arg(format!(
                "--statedir={}",
                self.file(&format!("{n}-state")).display()
            ))
            .arg("--port=41641")
            .arg("--no-logs-no-support")
            .args([
                "--login-server",
                &format!("http://{HS_ADDR}"),
                "--authkey-file",
            ])
            .arg(self.file("pak"))
            .args(["--hostname", n])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.file(&format!("{n}.log"))).unwrap());
        // SAFETY: only async-signal-safe syscalls between fork and exec (this hook runs after
        // enter_on_exec's, inside the node's network namespace).
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                let root = c"/";
                let run = c"/run";
                let tmpfs = c"tmpfs";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                    || libc::mount(
                        tmpfs.as_ptr(),
                        run.as_ptr(),
                        tmpfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0
                {
                    return fail();
                }
                Ok(())
            });
        }
        let p = Proc {
            child: Some(cmd.spawn().unwrap()),
            name: "tailscaled-standin",
        };
        drop(fd);
        p
    }

    fn sock(&self, n: &str) -> PathBuf {
        self.file(&format!("{n}.sock"))
    }

    fn wait_running(&self, n: &str) -> Value {
        let sock = self.sock(n);
        wait_for(&format!("{n} Running"), Duration::from_secs(15), || {
            if !sock.exists() {
                return None;
            }
            let (st, v) = localapi(&sock, "GET", "status", None);
            (st == 200 && v["BackendState"] == "Running" && v["Self"]["TailscaleIPs"].is_array())
                .then_some(v)
        })
    }

    /// One ICMP echo from node `n` to `dst`, waiting up to `wait_secs`.
    fn ping(&self, n: &str, dst: &str, wait_secs: u32) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "ping", "-c1"])
            .arg(format!("-W{wait_secs}"))
            .arg(dst)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn table52(&self, n: &str) -> String {
        ns_out(&self.ns(n), &["ip", "route", "show", "table", "52"])
    }

    fn wg_allowed(&self, p: &Proc, n: &str) -> String {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &p.pid().to_string(),
                "-m",
                "-n",
                "wg",
                "show",
                "ts0",
                "allowed-ips",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wg show in {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn two_nodes_tunnel_routes_restart_and_cleanup() {
    let t_start = Instant::now();
    let lab = Lab::new();
    let mut hs = lab.headscale();
    let key = std::fs::read_to_string(lab.file("api.key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(key.starts_with("hskey-api-"), "0.29 key format");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&lab.file("api.key")), 0o600);
    assert_eq!(mode(&lab.file("pak")), 0o600);
    assert_eq!(mode(&lab.file("hs.json")), 0o600);

    // Registration order decides the address: a then b.
    let ts_a = lab.tailscaled("a");
    let st_a = lab.wait_running("a");
    let ts_b = lab.tailscaled("b");
    let st_b = lab.wait_running("b");
    assert_eq!(st_a["Self"]["TailscaleIPs"][0], "100.64.0.1");
    assert_eq!(st_b["Self"]["TailscaleIPs"][0], "100.64.0.2");
    assert_eq!(st_a["Self"]["ID"], "1");
    assert!(
        st_a["Self"]["PublicKey"]
            .as_str()
            .unwrap()
            .starts_with("nodekey:")
    );
    assert_eq!(mode(&lab.file("a-state/tailscaled.state")), 0o600);
    // The tun: the node's /32 and MTU 1280; rule 5270 → table 52.
    let addr = ns_out(&lab.ns("a"), &["ip", "addr", "show", "ts0"]);
    assert!(
        addr.contains("100.64.0.1/32") && addr.contains("mtu 1280"),
        "{addr}"
    );
    assert!(ns_out(&lab.ns("a"), &["ip", "rule"]).contains("5270:\tfrom all lookup 52"));

    // Both see each other; ping over WireGuard.
    wait_for("b in a's peers", Duration::from_secs(5), || {
        let (_, v) = localapi(&lab.sock("a"), "GET", "status", None);
        v["Peer"]
            .as_object()
            .is_some_and(|m| {
                m.values()
                    .any(|p| p["TailscaleIPs"][0] == "100.64.0.2" && p["Online"] == true)
            })
            .then_some(())
    });
    wait_for(
        "ping a → 100.64.0.2 over the tunnel",
        Duration::from_secs(10),
        || lab.ping("a", "100.64.0.2", 1).then_some(()),
    );

    // LocalAPI rules hold on the stand-in.
    let raw = |head: &str| {
        let s = std::os::unix::net::UnixStream::connect(lab.sock("a")).unwrap();
        http(s, head, "").0
    };
    assert_eq!(
        raw("GET /localapi/v0/status HTTP/1.1\r\nHost: evil.example"),
        403
    );
    assert_eq!(
        raw(
            "GET /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock\r\nReferer: http://x/"
        ),
        403
    );
    let (st, err) = localapi(
        &lab.sock("a"),
        "PATCH",
        "prefs",
        Some(json!({"AdvertiseRoutes": ["10.244.1.5/24"], "AdvertiseRoutesSet": true})),
    );
    assert_eq!(st, 400);
    assert!(err["Error"].as_str().is_some(), "{err}");

    // a advertises 10.244.1.0/24 (as the daemon would), approved through the REST API.
    let (st, prefs) = localapi(
        &lab.sock("a"),
        "PATCH",
        "prefs",
        Some(json!({"AdvertiseRoutes": ["10.244.1.0/24"], "AdvertiseRoutesSet": true})),
    );
    assert_eq!(st, 200, "{prefs}");
    let u = lab.path("u");
    wait_for("route announced", Duration::from_secs(5), || {
        let v = valid(rest(
            &u,
            &key,
            "GET",
            "/api/v1/node/1",
            Some("/api/v1/node/{nodeId}"),
            None,
        ));
        (v["node"]["availableRoutes"] == json!(["10.244.1.0/24"])).then_some(())
    });
    // b watches its IPN bus (tailscale `ipn/localapi/localapi.go` `serveWatchIPNBus`): the
    // first message is the initial state; a's route then arrives as a netmap update.
    let mut bus = std::os::unix::net::UnixStream::connect(lab.sock("b")).unwrap();
    bus.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bus.write_all(
        b"GET /localapi/v0/watch-ipn-bus?mask=4126 HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut read_until = |needle: &str, seen: &mut Vec<u8>| {
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = bus.read(&mut buf).unwrap_or(0);
            assert!(
                n > 0,
                "IPN bus ended before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    read_until("\"State\":6", &mut seen);
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    seen.clear();
    let t_approve = Instant::now();
    let approved = valid(rest(
        &u,
        &key,
        "POST",
        "/api/v1/node/1/approve_routes",
        Some("/api/v1/node/{nodeId}/approve_routes"),
        Some(json!({"routes": ["10.244.1.0/24"]})),
    ));
    assert_eq!(approved["node"]["subnetRoutes"], json!(["10.244.1.0/24"]));
    // b learns the primary route (status) but, with RouteAll false, installs nothing.
    wait_for("b sees a's primary route", Duration::from_secs(2), || {
        let (_, v) = localapi(&lab.sock("b"), "GET", "status", None);
        v["Peer"]
            .as_object()
            .is_some_and(|m| {
                m.values()
                    .any(|p| p["PrimaryRoutes"] == json!(["10.244.1.0/24"]))
            })
            .then_some(())
    });
    read_until("\"PrimaryRoutes\":[\"10.244.1.0/24\"]", &mut seen);
    eprintln!("approve → b's IPN bus: {:?}", t_approve.elapsed());
    drop(bus);
    let convergence = t_approve.elapsed();
    eprintln!("route convergence (approve → peer status): {convergence:?}");
    assert!(convergence < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab.table52("b").contains("10.244.1.0/24"),
        "{}",
        lab.table52("b")
    );
    assert!(!lab.wg_allowed(&ts_b, "b").contains("10.244.1.0/24"));
    // RouteAll true on b: table 52 and WireGuard AllowedIPs get it.
    let (st, _) = localapi(
        &lab.sock("b"),
        "PATCH",
        "prefs",
        Some(json!({"RouteAll": true, "RouteAllSet": true})),
    );
    assert_eq!(st, 200);
    wait_for(
        "10.244.1.0/24 in b's table 52",
        Duration::from_secs(2),
        || {
            lab.table52("b")
                .contains("10.244.1.0/24 dev ts0")
                .then_some(())
        },
    );
    assert!(lab.wg_allowed(&ts_b, "b").contains("10.244.1.0/24"));
    // ... and stateful filtering / SNAT follow the prefs in b's ts-* chains.
    for family in ["ip", "ip6"] {
        let nft = ns_out(&lab.ns("b"), &["nft", "list", "table", family, "ts-nat"]);
        assert!(nft.contains("masquerade"), "{family}: NoSNAT false: {nft}");
    }
    let (st, _) = localapi(
        &lab.sock("b"),
        "PATCH",
        "prefs",
        Some(
            json!({"NoSNAT": true, "NoSNATSet": true, "NoStatefulFiltering": false, "NoStatefulFilteringSet": true}),
        ),
    );
    assert_eq!(st, 200);
    wait_for(
        "b's netfilter follows NoSNAT/stateful",
        Duration::from_secs(2),
        || {
            ["ip", "ip6"]
                .iter()
                .all(|family| {
                    let nat = ns_out(&lab.ns("b"), &["nft", "list", "table", family, "ts-nat"]);
                    let filter =
                        ns_out(&lab.ns("b"), &["nft", "list", "table", family, "ts-filter"]);
                    !nat.contains("masquerade") && filter.contains("ct state")
                })
                .then_some(())
        },
    );
    // The REST surface stays per spec.
    let nodes = valid(rest(
        &u,
        &key,
        "GET",
        "/api/v1/node",
        Some("/api/v1/node"),
        None,
    ));
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2);
    valid(rest(
        &u,
        &key,
        "GET",
        "/api/v1/preauthkey",
        Some("/api/v1/preauthkey"),
        None,
    ));
    valid(rest(
        &u,
        &key,
        "GET",
        "/api/v1/user",
        Some("/api/v1/user"),
        None,
    ));
    let unauth = rest(
        &u,
        "wrong",
        "GET",
        "/api/v1/node",
        Some("/api/v1/node"),
        None,
    );
    assert_eq!(unauth.status, 401);
    common::spec("0.29.2").validate_exchange(&unauth).unwrap();

    // Restart the Headscale stand-in from its state file: nodes, keys, routes, approvals kept.
    assert_eq!(
        hs.terminate(),
        Some(0),
        "headscale-standin exits 0 on SIGTERM"
    );
    let before = nodes;
    let mut hs = lab.headscale();
    let after = valid(rest(
        &u,
        &key,
        "GET",
        "/api/v1/node",
        Some("/api/v1/node"),
        None,
    ));
    for (b, a) in before["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["nodes"].as_array().unwrap())
    {
        for f in [
            "id",
            "nodeKey",
            "machineKey",
            "ipAddresses",
            "approvedRoutes",
            "name",
        ] {
            assert_eq!(a[f], b[f], "{f} after restart");
        }
    }
    let keys = valid(rest(
        &u,
        &key,
        "GET",
        "/api/v1/preauthkey",
        Some("/api/v1/preauthkey"),
        None,
    ));
    assert_eq!(keys["preAuthKeys"].as_array().unwrap().len(), 1);
    // The tailnet is as before: the route comes back as primary once a re-polls.
    wait_for(
        "a's route primary again after restart",
        Duration::from_secs(5),
        || {
            let v = valid(rest(
                &u,
                &key,
                "GET",
                "/api/v1/node",
                Some("/api/v1/node"),
                None,
            ));
            (v["nodes"][0]["subnetRoutes"] == json!(["10.244.1.0/24"])).then_some(())
        },
    );
    assert!(lab.ping("a", "100.64.0.2", 2));

    // SIGTERM leaves nothing behind in a's namespace.
    let mut ts_a = ts_a;
    assert_eq!(
        ts_a.terminate(),
        Some(0),
        "tailscaled-standin exits 0 on SIGTERM"
    );
    let links = ns_out(&lab.ns("a"), &["ip", "link"]);
    assert!(!links.contains("ts0"), "{links}");
    assert!(!ns_out(&lab.ns("a"), &["ip", "rule"]).contains("5270"));
    assert!(lab.table52("a").trim().is_empty());
    let ruleset = ns_out(&lab.ns("a"), &["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("ts-"), "{ruleset}");
    // ... and a is offline for Headscale once its map session is gone.
    let t_gone = Instant::now();
    wait_for("a offline", Duration::from_secs(6), || {
        let v = valid(rest(
            &u,
            &key,
            "GET",
            "/api/v1/node",
            Some("/api/v1/node"),
            None,
        ));
        (v["nodes"][0]["online"] == false && v["nodes"][0]["subnetRoutes"] == json!([]))
            .then_some(())
    });
    eprintln!("a offline after {:?}", t_gone.elapsed());
    let mut ts_b = ts_b;
    assert_eq!(ts_b.terminate(), Some(0));
    assert_eq!(hs.terminate(), Some(0));
    drop(lab);
    eprintln!("standins test: {:?}", t_start.elapsed());
}
