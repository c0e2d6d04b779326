//! A machine without a CA bundle (Debian without `ca-certificates`, as a fresh minimal
//! install): a plain-HTTP Headscale still gets a client, an `https://` one a message that says
//! what to install. Found by running the lab on a fresh `debootstrap --variant=minbase`
//! bookworm: every daemon pass failed with "http client: builder error".
//!
//! Its own test binary with one test: it points the system roots (rustls-native-certs reads
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` first) at nothing before any client exists.

use std::time::Duration;

use headcni_headscale::{HeadscaleClient, HeadscaleConfig, HeadscaleError};

#[test]
fn without_system_roots_http_works_and_https_says_what_to_install() {
    // SAFETY: the only test in this binary, run before any other thread reads the environment.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", "/nonexistent/headcni-test/ca.pem");
        std::env::set_var("SSL_CERT_DIR", "/nonexistent/headcni-test/certs");
    }
    let cfg = |url: &str| {
        let mut c = HeadscaleConfig::new(url, None);
        c.request_timeout = Duration::from_secs(1);
        c
    };
    HeadscaleClient::new(cfg("http://192.0.2.1:8080")).expect("a plain-HTTP client");
    match HeadscaleClient::new(cfg("https://headscale.example")) {
        Err(HeadscaleError::Config(msg)) => {
            assert!(msg.contains("ca-certificates"), "{msg}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an https client without any root certificate"),
    }
}
