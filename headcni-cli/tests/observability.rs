//! Observability end to end: the plugin event socket (send → pod table → metrics), the HTTP
//! endpoints on an ephemeral 127.0.0.1 port (status codes, bodies, content types, readiness
//! transitions, graceful shutdown), `/metrics` checked by `promtool check metrics`,
//! `headcni status` against a live server, and the deployment manifests' validation script.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use headcni_cli::events::{self, PluginEvent};
use headcni_core::control::{ControlPlaneStatus, Readiness, RouteState};
use headcni_node::http::{self, OPENMETRICS_CONTENT_TYPE};
use headcni_node::metrics::Metrics;
use headcni_node::state::{DaemonState, PodCidrSource, SharedState, StatusDoc};
use headcni_node::{events as daemon_events, status};
use tokio_util::sync::CancellationToken;

fn new_state() -> SharedState {
    Arc::new(RwLock::new(DaemonState::new("node-1", "host")))
}

fn event(verb: &str, cid: &str, ok: bool) -> PluginEvent {
    PluginEvent {
        verb: verb.to_owned(),
        container_id: cid.to_owned(),
        ifname: "eth0".to_owned(),
        pod_namespace: Some("default".to_owned()),
        pod_name: Some(format!("pod-{cid}")),
        ips: vec!["10.244.1.5".parse().expect("ip")],
        ok,
        code: (!ok).then_some(100),
        duration_us: 2_500,
    }
}

/// Polls `cond` every 5 ms for up to 3 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pods(state: &SharedState) -> Vec<String> {
    state
        .read()
        .expect("state lock")
        .pods
        .keys()
        .cloned()
        .collect()
}

struct EventServer {
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), daemon_events::EventSocketError>>,
}

async fn start_events(socket: PathBuf) -> EventServer {
    let state = new_state();
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(daemon_events::serve(
        socket.clone(),
        state.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let s = socket.clone();
    // Ready when the socket file is a socket that someone is bound to (a stale socket file
    // refuses the connection).
    wait_for("the event socket", || {
        std::fs::symlink_metadata(&s)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false)
            && UnixDatagram::unbound().and_then(|p| p.connect(&s)).is_ok()
    })
    .await;
    EventServer {
        state,
        metrics,
        cancel,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_round_trip_updates_pod_table_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The parent directory does not exist yet: serve creates it (0755).
    let socket = dir.path().join("run/headcni/daemon.sock");
    let srv = start_events(socket.clone()).await;

    let parent_mode = std::fs::metadata(dir.path().join("run/headcni"))
        .expect("parent")
        .permissions()
        .mode();
    assert_eq!(parent_mode & 0o777, 0o755);
    let sock_mode = std::fs::symlink_metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(sock_mode & 0o777, 0o600, "the event socket is root-only");

    assert!(events::send(&socket, &event("ADD", "c1", true)));
    assert!(events::send(&socket, &event("ADD", "c2", true)));
    assert!(events::send(&socket, &event("ADD", "c3", false)));
    let st = srv.state.clone();
    wait_for("two pods", || pods(&st).len() == 2).await;
    assert_eq!(pods(&srv.state), ["c1/eth0", "c2/eth0"]);
    {
        let s = srv.state.read().expect("lock");
        let p = &s.pods["c1/eth0"];
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.name.as_deref(), Some("pod-c1"));
        assert_eq!(
            p.ips,
            vec!["10.244.1.5".parse::<std::net::IpAddr>().expect("ip")]
        );
    }

    assert!(events::send(&socket, &event("DEL", "c1", true)));
    assert!(events::send(&socket, &event("CHECK", "c2", true)));
    let st = srv.state.clone();
    wait_for("c1 removed", || pods(&st) == ["c2/eth0"]).await;

    // Malformed datagrams are counted and ignored; the server keeps serving.
    let raw = UnixDatagram::unbound().expect("socket");
    for junk in [
        &b"not json"[..],
        b"{}",
        br#"{"verb":"REBOOT","container_id":"x","ifname":"eth0","pod_namespace":null,"pod_name":null,"ips":[],"ok":true,"code":null,"duration_us":1}"#,
        &[0xff; 100][..],
        &vec![b' '; events::MAX_EVENT_BYTES + 10][..],
    ] {
        raw.send_to(junk, &socket).expect("send junk");
    }
    assert!(events::send(&socket, &event("ADD", "c4", true)));
    let st = srv.state.clone();
    wait_for("c4 added", || pods(&st).len() == 2).await;
    assert_eq!(pods(&srv.state), ["c2/eth0", "c4/eth0"]);

    let text = srv.metrics.encode();
    for line in [
        "headcni_cni_operations_total{verb=\"ADD\",result=\"ok\"} 3",
        "headcni_cni_operations_total{verb=\"ADD\",result=\"error\"} 1",
        "headcni_cni_operations_total{verb=\"DEL\",result=\"ok\"} 1",
        "headcni_cni_operations_total{verb=\"CHECK\",result=\"ok\"} 1",
        "headcni_cni_operation_duration_seconds_count{verb=\"ADD\"} 4",
        "headcni_cni_operation_duration_seconds_bucket{le=\"0.0025\",verb=\"ADD\"} 4",
        "headcni_cni_operation_duration_seconds_bucket{le=\"0.001\",verb=\"ADD\"} 0",
        "headcni_plugin_events_total{result=\"accepted\"} 6",
        "headcni_plugin_events_total{result=\"malformed\"} 5",
        "headcni_pods 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    srv.cancel.cancel();
    let res = tokio::time::timeout(Duration::from_secs(1), srv.task)
        .await
        .expect("serve returns promptly on cancel")
        .expect("task");
    assert!(res.is_ok(), "{res:?}");
    assert!(!socket.exists(), "the socket is removed on exit");
    assert!(!events::send(&socket, &event("ADD", "c5", true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_live_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("daemon.sock");
    // A stale socket file (its owner is gone).
    drop(UnixDatagram::bind(&socket).expect("bind stale"));
    let srv = start_events(socket.clone()).await;
    assert!(events::send(&socket, &event("ADD", "a", true)));
    let st = srv.state.clone();
    wait_for("pod", || pods(&st).len() == 1).await;

    // A second daemon on the same path refuses to steal the live socket.
    let second = daemon_events::serve(
        socket.clone(),
        new_state(),
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    )
    .await;
    let err = format!("{:#}", second.expect_err("live socket must be refused"));
    assert!(err.contains("in use"), "{err}");
    // ... and the first one still works.
    assert!(events::send(&socket, &event("ADD", "b", true)));
    let st = srv.state.clone();
    wait_for("second pod", || pods(&st).len() == 2).await;
    srv.cancel.cancel();
    srv.task.await.expect("task").expect("serve");
}

#[test]
fn send_to_missing_socket_is_false_and_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent/daemon.sock");
    let ev = event("ADD", "c", true);
    let t = Instant::now();
    assert!(!events::send(&missing, &ev));
    let first = t.elapsed();
    // Stale socket file (ECONNREFUSED): also false, also immediate.
    let stale = dir.path().join("stale.sock");
    drop(UnixDatagram::bind(&stale).expect("bind"));
    assert!(!events::send(&stale, &ev));
    let n = 1000u32;
    let t = Instant::now();
    for _ in 0..n {
        assert!(!events::send(&missing, &ev));
    }
    let avg = t.elapsed() / n;
    println!("send() without a daemon: first {first:?}, average over {n}: {avg:?}");
    // Loose bound (only to catch a blocking implementation, e.g. a connect retry loop): the
    // budget is 20 ms per call.
    assert!(first < Duration::from_millis(20), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_cost_with_a_listening_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("daemon.sock");
    let srv = start_events(socket.clone()).await;
    let n = 200usize;
    let mut delivered = 0usize;
    let mut total = Duration::ZERO;
    let mut max = Duration::ZERO;
    for i in 0..n {
        let ev = event("ADD", &format!("cost{i}"), true);
        let t = Instant::now();
        if events::send(&socket, &ev) {
            delivered += 1;
        }
        let d = t.elapsed();
        total += d;
        max = max.max(d);
        // One event per plugin invocation in real life; give the daemon a moment, so that the
        // small unix datagram queue (net.unix.max_dgram_qlen) is not what is measured.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    println!(
        "send() with a listening daemon: average {:?}, max {max:?}, {delivered}/{n} delivered",
        total / u32::try_from(n).unwrap_or(1)
    );
    let st = srv.state.clone();
    wait_for("all delivered events applied", || {
        pods(&st).len() == delivered
    })
    .await;
    assert!(delivered > 0);
    srv.cancel.cancel();
    srv.task.await.expect("task").expect("serve");
}

// ---------------------------------------------------------------------------------------
// HTTP

use headcni_testkit::http::{Response as HttpResponse, parse_response};

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    headcni_testkit::http::request(addr, method, path, &[], None).expect("HTTP request")
}

struct HttpServer {
    addr: SocketAddr,
    state: SharedState,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), std::convert::Infallible>>,
}

async fn start_http() -> HttpServer {
    let listener = http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = new_state();
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(http::serve(
        listener,
        state.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    HttpServer {
        addr,
        state,
        metrics,
        cancel,
        task,
    }
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || request(addr, "GET", &path))
        .await
        .expect("request task")
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().expect("cidr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_readiness_transitions() {
    let srv = start_http().await;
    let addr = srv.addr;

    let r = get(addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");

    let r = get(addr, "/nope").await;
    assert_eq!(r.status, 404);
    let r = tokio::task::spawn_blocking(move || request(addr, "POST", "/readyz"))
        .await
        .expect("task");
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    let r = tokio::task::spawn_blocking(move || request(addr, "DELETE", "/metrics"))
        .await
        .expect("task");
    assert_eq!(r.status, 405);

    let r = get(addr, "/status").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let st: DaemonState = serde_json::from_str(&r.body).expect("status is a DaemonState");
    assert_eq!(st.node_name, "node-1");

    // Readiness: every missing piece is one line; filling the state removes them one by one.
    let readyz = |r: HttpResponse| {
        (
            r.status,
            r.body.lines().map(str::to_owned).collect::<Vec<_>>(),
        )
    };
    let (code, reasons) = readyz(get(addr, "/readyz").await);
    assert_eq!(code, 503);
    assert_eq!(
        reasons,
        [
            "PodCIDR not known yet",
            "CNI conflist not written",
            "masquerade rules not in place",
            "control plane not reconciled yet"
        ]
    );
    // /healthz never depends on readiness (nor on Headscale).
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert!(
        get(addr, "/metrics")
            .await
            .body
            .contains("\nheadcni_ready 0\n")
    );

    type Step = Box<dyn Fn(&mut DaemonState)>;
    let steps: Vec<(Step, usize)> = vec![
        (
            Box::new(|s| {
                s.pod_cidrs = vec![net("10.244.1.0/24")];
                s.pod_cidr_source = Some(PodCidrSource::Config);
            }),
            3,
        ),
        (
            Box::new(|s| {
                s.conflist = Some("/etc/cni/net.d/10-headcni.conflist".into());
                s.conflist_written = true;
            }),
            2,
        ),
        (Box::new(|s| s.masquerade_ready = true), 1),
        (
            Box::new(|s| s.control = Some(ControlPlaneStatus::initial("headscale/api"))),
            1,
        ),
    ];
    for (step, left) in steps {
        step(&mut srv.state.write().expect("lock"));
        let (code, reasons) = readyz(get(addr, "/readyz").await);
        assert_eq!((code, reasons.len()), (503, left), "{reasons:?}");
    }
    let (_, reasons) = readyz(get(addr, "/readyz").await);
    assert!(
        reasons[0].starts_with("control plane: not-reconciled"),
        "{reasons:?}"
    );
    {
        let mut s = srv.state.write().expect("lock");
        if let Some(c) = s.control.as_mut() {
            c.wanted = vec![net("10.244.1.0/24")];
            c.routes = RouteState {
                advertised: vec![net("10.244.1.0/24")],
                approved: vec![net("10.244.1.0/24")],
                primary: vec![net("10.244.1.0/24")],
            };
            c.readiness = Readiness::Ready;
        }
    }
    let r = get(addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let m = get(addr, "/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.headers["content-type"], OPENMETRICS_CONTENT_TYPE);
    assert!(m.body.contains("\nheadcni_ready 1\n"), "{}", m.body);
    assert!(m.body.ends_with("# EOF\n"));

    // `headcni status` against the live server (what it prints and its exit status).
    let ready = |doc: StatusDoc| doc.state.not_ready_reasons().is_empty();
    assert!(
        ready(status::fetch_all(addr).await.expect("status")),
        "ready"
    );
    let body = status::fetch(addr).await.expect("fetch");
    let st: DaemonState = serde_json::from_slice(&body).expect("json");
    let text = status::render(&st);
    println!("{text}");
    assert!(
        text.contains("PodCIDR:     10.244.1.0/24 (source: config)"),
        "{text}"
    );
    assert!(text.ends_with("READY\n"));
    srv.state.write().expect("lock").masquerade_ready = false;
    let doc = status::fetch_all(addr).await.expect("status");
    assert!(status::render(&doc.state).contains("NOT READY"));
    assert!(!ready(doc), "not ready");

    srv.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), srv.task)
        .await
        .expect("shutdown")
        .expect("task")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_daemon_that_is_not_running() {
    // Bind then drop: a port on which nothing listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let err = format!(
        "{:#}",
        status::fetch_all(addr).await.expect_err("not running")
    );
    assert!(err.contains("not running"), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_fails_fast_when_the_port_is_taken() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let err = format!("{:#}", http::bind(addr).await.expect_err("taken"));
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_returns_quickly() {
    let srv = start_http().await;
    let addr = srv.addr;
    // An idle keep-alive connection (one request served, connection kept open).
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // An in-flight request: headers half sent when the shutdown starts.
    let mut inflight = TcpStream::connect(addr).expect("connect");
    inflight
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    write!(inflight, "GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("write");
    // A slow client that never finishes its request.
    let mut stuck = TcpStream::connect(addr).expect("connect");
    write!(stuck, "GET /readyz HTTP/1.1\r\n").expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let t = Instant::now();
    srv.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The in-flight request completes after the shutdown began ...
    inflight.write_all(b"\r\n").expect("finish request");
    let mut raw = Vec::new();
    inflight
        .read_to_end(&mut raw)
        .expect("read in-flight response");
    let r = parse_response(&raw).expect("an HTTP response");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(
        r.headers.get("connection").map(String::as_str),
        Some("close")
    );
    // ... the idle keep-alive connection is closed ...
    let mut rest = Vec::new();
    let closed = idle.read_to_end(&mut rest);
    assert!(matches!(closed, Ok(0)), "{closed:?}");
    // ... and serve returns within about a second even with the stuck client.
    let res = tokio::time::timeout(Duration::from_millis(2000), srv.task)
        .await
        .expect("serve returns within the grace period")
        .expect("task");
    assert!(res.is_ok(), "{res:?}");
    let took = t.elapsed();
    println!("HTTP shutdown with a stuck client took {took:?}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
    drop(stuck);
}

// ---------------------------------------------------------------------------------------
// /metrics through promtool

/// `promtool check metrics` (headcni-testkit's): whether it passed, and its output.
fn promtool_check(text: &str) -> (bool, String) {
    match headcni_testkit::metrics::promtool_check(text) {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    let srv = start_http().await;
    let m = &srv.metrics;
    m.record_cni("ADD", true, 0.003);
    m.record_cni("ADD", false, 0.2);
    m.record_cni("DEL", true, 0.001);
    m.record_cni("STATUS", true, 0.0004);
    m.record_plugin_event(true);
    m.record_plugin_event(false);
    m.set_ipam("10.244.1.0/24", 12, 241);
    m.set_ipam("fd00:10:244:1::/64", 12, u64::MAX);
    m.record_control("headscale/approve_routes", true);
    m.record_control("localapi/prefs", false);
    m.set_route("10.244.1.0/24", true, true, true);
    m.observe_reconcile("podcidr", 0.01, true);
    m.observe_reconcile("routes", 3.0, false);
    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    for family in [
        "headcni_build_info",
        "headcni_cni_operations_total",
        "headcni_cni_operation_duration_seconds_bucket",
        "headcni_plugin_events_total",
        "headcni_ipam_allocated_addresses",
        "headcni_ipam_free_addresses",
        "headcni_control_plane_requests_total",
        "headcni_control_plane_errors_total",
        "headcni_route_state",
        "headcni_reconcile_duration_seconds_bucket",
        "headcni_reconcile_errors_total",
        "headcni_pods",
        "headcni_ready",
    ] {
        assert!(
            r.body.lines().any(|l| l.starts_with(family)),
            "{family} missing in\n{}",
            r.body
        );
    }
    assert!(
        r.body.ends_with("# EOF\n"),
        "OpenMetrics must end with # EOF"
    );
    let text = headcni_testkit::metrics::openmetrics_to_text(&r.body)
        .unwrap_or_else(|e| panic!("/metrics is not well-formed OpenMetrics: {e}\n{}", r.body));
    let (ok, msg) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{msg}\n--- input ---\n{text}"
    );
    // The check is not vacuous: promtool rejects a counter without `_total` and garbage.
    let (ok, _) =
        promtool_check("# HELP bad_requests x\n# TYPE bad_requests counter\nbad_requests 1\n");
    assert!(!ok, "promtool must flag a counter named without _total");
    let (ok, _) = promtool_check("this is { not metrics\n");
    assert!(!ok, "promtool must reject unparsable input");
    srv.cancel.cancel();
    srv.task.await.expect("task").expect("serve");
}

// ---------------------------------------------------------------------------------------
// deploy/

#[test]
fn deploy_manifests_pass_the_schema_validator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/validate-deploy.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .output()
        .expect("run scripts/validate-deploy.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(
        out.status.success(),
        "scripts/validate-deploy.sh failed:\n{log}"
    );
    assert!(
        log.contains("self-check: the broken manifest was rejected"),
        "{log}"
    );
}
