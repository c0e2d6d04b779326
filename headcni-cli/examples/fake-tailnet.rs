//! A stand-in tailnet for trying `headcni daemon` on one machine: a fake Headscale (REST API
//! per the v0.29 OpenAPI spec) on 127.0.0.1 and a fake tailscaled LocalAPI, logged in to it,
//! on a unix socket. They are the test doubles of the dev-only crate `headcni-testkit`:
//! never use them as a real control plane.
//!
//! ```sh
//! cargo run -p headcni-cli --example fake-tailnet -- /tmp/tn 127.0.0.1:18080 node-1
//! # prints the API key file, the socket and a config.toml to point `headcni daemon` at
//! ```
//! Run it inside the network namespace the daemon will run in (the TCP listener stays there).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use headcni_testkit::{FakeHeadscale, FakeHeadscaleOptions, FakeTailscaled};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/headcni-fake-tailnet".into()),
    );
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let node = args.next().unwrap_or_else(|| "node-1".into());
    let listen = listen
        .parse()
        .map_err(|e| std::io::Error::other(format!("listen address: {e}")))?;
    std::fs::create_dir_all(&dir)?;

    let hs = FakeHeadscale::start(FakeHeadscaleOptions {
        listen,
        ..Default::default()
    })
    .await?;
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, hs.api_key())?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    let socket = dir.join("tailscaled.sock");
    let _ = std::fs::remove_file(&socket);
    let prefs = headcni_testkit::default_prefs();
    let _ts =
        FakeTailscaled::start_logged_in(&socket, hs.control(), &node, "headcni", prefs).await?;

    println!(
        "fake Headscale: http://{} (API key in {})",
        hs.addr(),
        key_file.display()
    );
    println!("fake tailscaled LocalAPI: {}", socket.display());
    println!(
        "config.toml:\n[node]\nname = \"{node}\"\n[tailscale]\nsocket = \"{}\"\n[headscale]\nurl = \"http://{}\"\napi_key_file = \"{}\"",
        socket.display(),
        hs.addr(),
        key_file.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
