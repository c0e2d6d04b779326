//! Regression test for the stand-in's lock order (LocalAPI state before [`Control`]): the
//! deadlock that stopped a 28- or 32-node lab (a node's LocalAPI never answered again, so its
//! tailscaled "never reached Running").

use std::sync::mpsc;

use super::*;

fn status_request() -> Req {
    Req {
        method: http::Method::GET,
        uri: http::Uri::from_static("/localapi/v0/status"),
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::new(),
    }
}

fn node(id: u64) -> NetmapNode {
    NetmapNode {
        id,
        hostname: format!("node-{id}"),
        node_key: format!("nodekey:{:064x}", id),
        endpoints: Vec::new(),
        tailnet_ips: vec![IpAddr::from([100, 64, 0, id as u8])],
        primary_routes: Vec::new(),
        online: true,
    }
}

/// Thread A persists the state (as the control loop does every turn) while thread B asks the
/// LocalAPI for its status (as the daemon and the lab do); both must finish. Before the fix
/// `persist` held the [`Control`] lock while asking the LocalAPI, and `status` holds the
/// LocalAPI lock while asking [`Control`] for the node: the two threads met and stopped for
/// good within a few thousand turns.
#[test]
fn persisting_while_the_localapi_answers_status_does_not_deadlock() {
    const TURNS: usize = 20_000;
    let (nm_tx, _) = watch::channel(0u64);
    let control = Arc::new(Control {
        shared: Mutex::new(Shared::default()),
        wake: Notify::new(),
        netmap_gen: nm_tx,
    });
    control.lock().netmap = Some(Netmap {
        generation: 1,
        self_node: node(7),
        peers: (1..6).map(node).collect(),
        dns: Default::default(),
    });
    let api = LocalApi::new(LocalApiInit {
        prefs: up_prefs("http://192.0.2.1:8080", "node-7"),
        node_key: node_key_of(&[7; 32]),
        node_id: Some(7),
        backend_state: "Running".to_string(),
        hostname: "node-7".to_string(),
        control: Some(Arc::new(ControlRef(control.clone()))),
    });
    let (done_tx, done_rx) = mpsc::channel();
    let persister = {
        let (control, api, done) = (control.clone(), api.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for _ in 0..TURNS {
                let p = snapshot(&control, &api);
                assert_eq!(p.node_id, Some(7));
            }
            let _ = done.send("persist");
        })
    };
    let asker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for _ in 0..TURNS {
            let resp = rt.block_on(api.handle(status_request()));
            assert_eq!(resp.status(), http::StatusCode::OK);
        }
        let _ = done_tx.send("status");
    });
    // A bound on a hang, not a timing assertion: both loops take well under a second here;
    // deadlocked threads never finish.
    let mut finished = Vec::new();
    for _ in 0..2 {
        match done_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(who) => finished.push(who),
            Err(_) => panic!("deadlock: only {finished:?} finished"),
        }
    }
    persister.join().expect("persister");
    asker.join().expect("asker");
}
