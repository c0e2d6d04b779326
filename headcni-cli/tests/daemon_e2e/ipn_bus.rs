//! Issue 13 item 1: the daemon follows tailscaled's IPN bus. With `reconcile_interval_secs
//! = 300` (no poll within the test), a peer's route appearing in tailscaled's netmap and
//! `AdvertiseRoutes` drift are acted on through the bus alone; with the bus, steady state
//! and netmap changes that need no approval cost Headscale nothing; a tailscaled without the
//! bus (404, as before v1.34) still works by polling.

use super::*;
use headcni_testkit::TailscaledVersion;

/// Far below the 300 s interval: reaching a state within it means the bus, not a poll, did.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn control_passes(node: &Node) -> f64 {
    let r = node.get("/metrics").expect("GET /metrics");
    sample(
        &r.body,
        "headcni_reconcile_duration_seconds_count",
        &[("step", "control-plane")],
    )
    .unwrap_or(0.0)
}

fn peer_routes(st: &Value) -> Vec<IpNetwork> {
    st["control"]["peers"]
        .as_array()
        .map(|ps| ps.iter().flat_map(|p| routes_of(&p["routes"])).collect())
        .unwrap_or_default()
}

fn wait_status(node: &Node, d: &mut Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_for(EVENT_TIMEOUT, what, || {
        let st = node.status()?;
        if pred(&st) {
            Ok(st)
        } else {
            Err(format!("/status: {st}"))
        }
    })
}

fn bus_scenario(tag: &str, version: TailscaledVersion) {
    let mut node = Node::new(tag, NodeOpts::default());
    node.cfg.reconcile_secs = 300;
    node.write_cfg();
    node.fakes.ts.set_version(version);
    let hs = &node.fakes.hs;
    let mut d = node.start(&[]);
    node.wait_ready(&mut d, READY_TIMEOUT);
    wait_status(&node, &mut d, "ipn_bus connected", |st| {
        st["ipn_bus"] == "connected"
    });
    assert!(
        node.fakes
            .ts
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/localapi/v0/watch-ipn-bus?mask=") && r.status == 200),
        "the daemon opened the IPN bus"
    );
    let headscale_before = hs.exchanges().len();
    let passes_before = control_passes(&node);

    // (a) A peer's pod route appears in the netmap: the peers in /status follow at once.
    let peer = hs.register_node(&format!("{}-peer", node.name), "ops", &random_node_key());
    hs.announce_routes(peer.id, &[net(PEER_POD)]);
    hs.set_approved(peer.id, &[net(PEER_POD)]);
    let t = Instant::now();
    wait_status(&node, &mut d, "the peer's route in /status", |st| {
        peer_routes(st).contains(&net(PEER_POD))
    });
    eprintln!(
        "E2E-NUMBERS {tag}: peer route in /status {:?} after approval",
        t.elapsed()
    );
    // ... and leaves it when the peer's approval is revoked.
    hs.set_approved(peer.id, &[]);
    wait_status(&node, &mut d, "the peer's route gone from /status", |st| {
        !peer_routes(st).contains(&net(PEER_POD))
    });
    // A peer without routes joins: nothing to do (no pass needed, none asked of Headscale).
    hs.register_node(&format!("{}-plain", node.name), "ops", &random_node_key());

    // Steady state with the bus: those passes asked Headscale nothing.
    let passes = control_passes(&node);
    assert!(
        passes >= passes_before + 2.0,
        "bus-driven control-plane passes ran: {passes_before} → {passes}"
    );
    let new: Vec<_> = hs.exchanges().into_iter().skip(headscale_before).collect();
    assert!(
        new.is_empty(),
        "no Headscale request while the routes stay primary: {new:?}"
    );
    assert_eq!(node.get("/readyz").expect("/readyz").status, 200);

    // (b) AdvertiseRoutes loses the PodCIDR behind the daemon's back: repaired at once.
    let mut p = node.fakes.ts.prefs();
    p.advertise_routes.retain(|r| *r != net(POD));
    node.fakes.ts.set_prefs(p);
    let t = Instant::now();
    d.wait_for(EVENT_TIMEOUT, "AdvertiseRoutes repaired", || {
        let p = node.fakes.ts.prefs();
        if p.advertise_routes.contains(&net(POD)) {
            Ok(())
        } else {
            Err(format!("{:?}", p.advertise_routes))
        }
    });
    eprintln!(
        "E2E-NUMBERS {tag}: AdvertiseRoutes repaired {:?} after the drift",
        t.elapsed()
    );
    node.wait_ready(&mut d, EVENT_TIMEOUT);
    d.signal(Signal::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(5));
}

#[test]
fn ipn_bus_drives_passes_without_polling_v1_102() {
    bus_scenario("busnew", TailscaledVersion::V1_102);
}

#[test]
fn ipn_bus_drives_passes_without_polling_v1_64_whole_netmaps() {
    bus_scenario("busold", TailscaledVersion::V1_64);
}

/// (c) tailscaled without the bus (404): the daemon polls at the reconcile interval.
#[test]
fn without_the_ipn_bus_the_daemon_polls() {
    let node = Node::new("nobus", NodeOpts::default());
    node.fakes.ts.set_ipn_bus(false);
    let hs = &node.fakes.hs;
    let mut d = node.start(&[]);
    node.wait_ready(&mut d, READY_TIMEOUT);
    wait_status(&node, &mut d, "ipn_bus absent", |st| {
        st["ipn_bus"] == "absent"
    });
    assert!(
        node.fakes
            .ts
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/localapi/v0/watch-ipn-bus") && r.status == 404),
        "the daemon tried the bus and got 404"
    );
    let peer = hs.register_node(&format!("{}-peer", node.name), "ops", &random_node_key());
    hs.announce_routes(peer.id, &[net(PEER_POD)]);
    hs.set_approved(peer.id, &[net(PEER_POD)]);
    wait_status(
        &node,
        &mut d,
        "the peer's route in /status (polled)",
        |st| peer_routes(st).contains(&net(PEER_POD)),
    );
    let mut p = node.fakes.ts.prefs();
    p.advertise_routes.retain(|r| *r != net(POD));
    node.fakes.ts.set_prefs(p);
    d.wait_for(EVENT_TIMEOUT, "AdvertiseRoutes repaired by polling", || {
        let p = node.fakes.ts.prefs();
        if p.advertise_routes.contains(&net(POD)) {
            Ok(())
        } else {
            Err(format!("{:?}", p.advertise_routes))
        }
    });
    node.wait_ready(&mut d, EVENT_TIMEOUT);
    d.signal(Signal::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(5));
}
