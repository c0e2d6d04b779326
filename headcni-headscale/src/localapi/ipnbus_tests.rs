//! Parsing of `ipn.Notify` lines as tailscaled writes them, and the stream's bounds over a
//! raw HTTP/1.1 server on a unix socket.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use headcni_core::control::bus::{BusChange, BusView};

/// The first message of a v1.102 session with `NotifyInitialState | InitialPrefs |
/// InitialNetMap` (fields HeadCNI ignores included, as tailscaled sends them).
const INITIAL_V1_102: &str = r#"{"Version":"1.102.3-t1234","SessionID":"abc","State":6,"Prefs":{"ControlURL":"https://hs.example","RouteAll":true,"AllowSingleHosts":true,"CorpDNS":true,"WantRunning":true,"ShieldsUp":false,"AdvertiseTags":null,"Hostname":"","NotepadURLs":false,"AdvertiseRoutes":["10.244.1.0/24"],"NoSNAT":true,"NoStatefulFiltering":true,"NetfilterMode":2,"Config":{"PrivateMachineKey":"privkey:0000","PrivateNodeKey":"privkey:0000","OldPrivateNodeKey":"privkey:0000","Provider":"","LoginName":""}},"SelfChange":{"ID":1,"StableID":"n1","Name":"node-1.tailnet.","Key":"nodekey:aa","Addresses":["100.64.0.1/32","fd7a:115c:a1e0::1/128"],"AllowedIPs":["100.64.0.1/32","fd7a:115c:a1e0::1/128","10.244.1.0/24"],"PrimaryRoutes":["10.244.1.0/24"],"Hostinfo":{"OS":"linux"}},"NetMap":{"SelfNode":{"ID":1,"StableID":"n1","Name":"node-1.tailnet.","Addresses":["100.64.0.1/32"],"AllowedIPs":["100.64.0.1/32","10.244.1.0/24"],"PrimaryRoutes":["10.244.1.0/24"]},"NodeKey":"nodekey:aa","Peers":[{"ID":2,"StableID":"n2","Name":"node-2.tailnet.","Addresses":["100.64.0.2/32"],"AllowedIPs":["100.64.0.2/32","10.244.2.0/24"],"PrimaryRoutes":["10.244.2.0/24"],"Online":true},{"ID":3,"StableID":"n3","Name":"node-3.tailnet.","Addresses":["100.64.0.3/32"],"AllowedIPs":["100.64.0.3/32"]}],"DNS":{},"UserProfiles":{}}}"#;

/// A v1.102 netmap update for a watcher with `NotifyPeerChanges`: `SelfChange` and every peer.
const UPDATE_V1_102: &str = r#"{"Version":"1.102.3-t1234","SelfChange":{"ID":1,"AllowedIPs":["100.64.0.1/32","10.244.1.0/24"],"PrimaryRoutes":["10.244.1.0/24"]},"PeersChanged":[{"ID":2,"AllowedIPs":["100.64.0.2/32","10.244.2.0/24"],"PrimaryRoutes":["10.244.2.0/24"]},{"ID":3,"AllowedIPs":["100.64.0.3/32","10.244.3.0/24"],"PrimaryRoutes":["10.244.3.0/24"]}],"UserProfiles":{"1":{"ID":1,"LoginName":"ops"}}}"#;

/// A v1.64 netmap update (legacy: the whole `NetMap`, `Peers` null when none).
const UPDATE_V1_64: &str = r#"{"Version":"1.64.2-t1","NetMap":{"SelfNode":{"ID":1,"AllowedIPs":["100.64.0.1/32"],"PrimaryRoutes":null},"Peers":null}}"#;

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn the_initial_message_parses_and_triggers_everything() {
    let notify: IpnNotify = serde_json::from_str(INITIAL_V1_102).unwrap();
    assert_eq!(notify.state, Some(6));
    assert_eq!(backend_state_name(6), "Running");
    let prefs = notify.prefs.as_ref().unwrap();
    assert_eq!(prefs.advertise_routes, vec![n("10.244.1.0/24")]);
    let ev = notify.to_bus_event();
    let (me, peers) = ev.full_netmap.clone().unwrap();
    assert_eq!(me.unwrap().primary_routes, vec![n("10.244.1.0/24")]);
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].primary_routes, vec![n("10.244.2.0/24")]);
    let mut view = BusView::new();
    assert_eq!(
        view.apply(&ev),
        vec![
            BusChange::State,
            BusChange::Prefs,
            BusChange::SelfRoutes,
            BusChange::PeerRoutes
        ]
    );
    // v1.102 update: a peer's route appeared.
    let update: IpnNotify = serde_json::from_str(UPDATE_V1_102).unwrap();
    assert_eq!(
        view.apply(&update.to_bus_event()),
        vec![BusChange::PeerRoutes]
    );
    assert_eq!(view.apply(&update.to_bus_event()), vec![]);
}

#[test]
fn a_legacy_netmap_update_parses_with_nulls() {
    let notify: IpnNotify = serde_json::from_str(UPDATE_V1_64).unwrap();
    let ev = notify.to_bus_event();
    let (me, peers) = ev.full_netmap.unwrap();
    assert!(me.unwrap().primary_routes.is_empty());
    assert!(peers.is_empty());
    assert_eq!(ev.state, None, "absent fields have not changed");
}

#[test]
fn unrelated_notifications_parse_to_empty_events() {
    for line in [
        r#"{"Version":"1.102.3","Engine":{"RBytes":1,"WBytes":2,"NumLive":1,"LiveDERPs":0,"LivePeers":{}}}"#,
        r#"{"Version":"1.102.3","Health":{"Warnings":{}}}"#,
        r#"{"Version":"1.102.3","BrowseToURL":null,"Prefs":null}"#,
    ] {
        let notify: IpnNotify = serde_json::from_str(line).unwrap();
        assert_eq!(notify.to_bus_event(), BusEvent::default(), "{line}");
    }
}

#[test]
fn unknown_states_are_named_by_number() {
    assert_eq!(backend_state_name(2), "NeedsLogin");
    assert_eq!(backend_state_name(42), "State(42)");
    assert_eq!(backend_state_name(-1), "State(-1)");
}

#[test]
fn the_headcni_mask_is_the_documented_bits() {
    // 2 + 4 + 8 + 16 + 4096: no NotifyRateLimit (400 with NotifyPeerChanges).
    assert_eq!(NotifyWatchOpt::HEADCNI.0, 4126);
    assert!(!NotifyWatchOpt::HEADCNI.contains(NotifyWatchOpt::RATE_LIMIT));
}

/// A one-shot raw HTTP/1.1 server on a unix socket: answers the first request with `head`
/// then writes `chunks` (each a chunk of a chunked body) with a pause between them, then
/// keeps the connection open until `hold` passes.
async fn raw_server(
    head: &'static str,
    chunks: Vec<Vec<u8>>,
    hold: Duration,
) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ts.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(head.as_bytes()).await;
        for c in chunks {
            let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
            let _ = s.write_all(&c).await;
            let _ = s.write_all(b"\r\n").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(hold).await;
        let _ = s.write_all(b"0\r\n\r\n").await;
    });
    (sock, dir)
}

const OK_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn lines_split_across_chunks_are_joined_and_the_end_is_reported() {
    let line = format!("{INITIAL_V1_102}\n\n{UPDATE_V1_64}\n");
    let bytes = line.into_bytes();
    let chunks: Vec<Vec<u8>> = bytes.chunks(97).map(<[u8]>::to_vec).collect();
    let (sock, _dir) = raw_server(OK_HEAD, chunks, Duration::ZERO).await;
    let client = LocalApiClient::new(&sock);
    let mut stream = client.watch_ipn_bus(NotifyWatchOpt::HEADCNI).await.unwrap();
    let first = stream.next().await.unwrap();
    assert_eq!(first.state, Some(6));
    let second = stream.next().await.unwrap();
    assert_eq!(second.version, "1.64.2-t1");
    assert!(matches!(stream.next().await, Err(IpnBusError::Ended)));
}

#[tokio::test]
async fn a_too_long_line_ends_the_stream() {
    let chunks = vec![vec![b'x'; 3000], vec![b'x'; 3000]];
    let (sock, _dir) = raw_server(OK_HEAD, chunks, Duration::from_secs(5)).await;
    let client = LocalApiClient::new(&sock);
    let mut stream = client
        .watch_ipn_bus(NotifyWatchOpt::HEADCNI)
        .await
        .unwrap()
        .with_max_line(4096);
    assert!(matches!(
        stream.next().await,
        Err(IpnBusError::LineTooLong { limit: 4096 })
    ));
}

#[tokio::test]
async fn a_silent_stream_ends_at_the_idle_bound() {
    let (sock, _dir) = raw_server(OK_HEAD, vec![], Duration::from_secs(30)).await;
    let client = LocalApiClient::new(&sock);
    let mut stream = client
        .watch_ipn_bus(NotifyWatchOpt::HEADCNI)
        .await
        .unwrap()
        .with_idle_timeout(Some(Duration::from_millis(100)));
    assert!(matches!(stream.next().await, Err(IpnBusError::Idle { .. })));
}

#[tokio::test]
async fn garbage_is_a_decode_error() {
    let (sock, _dir) = raw_server(
        OK_HEAD,
        vec![b"{not json\n".to_vec()],
        Duration::from_secs(5),
    )
    .await;
    let client = LocalApiClient::new(&sock);
    let mut stream = client.watch_ipn_bus(NotifyWatchOpt::HEADCNI).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Err(IpnBusError::Decode { .. })
    ));
}

#[tokio::test]
async fn an_old_tailscaled_answers_404_and_the_bus_is_absent() {
    // ipn/localapi before v1.34: `http.NotFound` for an unknown route.
    const HEAD: &str = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\n404 page not found\n";
    let (sock, _dir) = raw_server(HEAD, vec![], Duration::ZERO).await;
    let err = LocalApiClient::new(&sock)
        .watch_ipn_bus(NotifyWatchOpt::HEADCNI)
        .await
        .unwrap_err();
    assert!(err.is_absent(), "{err}");
}

#[tokio::test]
async fn a_bad_mask_is_a_request_error_not_absent() {
    const HEAD: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n\r\nbad mask";
    let (sock, _dir) = raw_server(HEAD, vec![], Duration::ZERO).await;
    let err = LocalApiClient::new(&sock)
        .watch_ipn_bus(NotifyWatchOpt(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IpnBusError::Request(LocalApiError::BadRequest { .. })),
        "{err}"
    );
}
