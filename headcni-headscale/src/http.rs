//! The HTTP client both REST clients build the same way (Headscale's `/api/v1` and
//! Tailscale's `/api/v2`): an `http(s)://host[:port][/prefix]` base URL, and a reqwest client
//! with rustls (ring), no redirects, bounded connect and request time, HeadCNI's user agent,
//! and optionally extra root certificates. Errors are messages for the callers' `Config`
//! variants, with the URL's userinfo and query redacted.

use std::time::Duration;

use reqwest::Url;

use crate::secret::redact_url;

/// Parses `url` as an API base: `http` or `https` with a host; query and fragment dropped.
///
/// Errors: the message to report (the URL redacted), for a parse error or another scheme.
pub(crate) fn base_url(url: &str) -> Result<Url, String> {
    let shown = redact_url(url);
    let mut base = Url::parse(url).map_err(|e| format!("url {shown:?}: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
        return Err(format!(
            "url {shown:?}: must be http(s)://host[:port][/prefix]"
        ));
    }
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// A reqwest client for `base`: `request_timeout` per request, `connect_timeout`, no
/// redirects, user agent `headcni/<version>`, and the PEM bundle `extra_root_pem` trusted
/// besides the system roots. Installs the rustls ring provider (idempotent).
///
/// A machine without a CA bundle (Debian without `ca-certificates`: no
/// `/etc/ssl/certs`) makes the system verifier, and so the client, fail to build. For a
/// plain `http://` base that does not matter: the client is then built with a TLS
/// configuration that trusts only `extra_root_pem` (nothing, without it), which a plain-HTTP
/// API never uses. For `https://` it is an error that says what to install.
///
/// Errors: the message to report, for a bad PEM bundle or a client that cannot be built.
pub(crate) fn client(
    base: &Url,
    request_timeout: Duration,
    connect_timeout: Duration,
    extra_root_pem: Option<&[u8]>,
) -> Result<reqwest::Client, String> {
    crate::tls::install_ring_provider();
    let builder = || {
        reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("headcni/", env!("CARGO_PKG_VERSION")))
    };
    let mut with_system_roots = builder();
    if let Some(pem) = extra_root_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("extra root certificates: {e}"))?;
        with_system_roots = with_system_roots.tls_certs_merge(certs);
    }
    match with_system_roots.build() {
        Ok(c) => Ok(c),
        Err(e) if base.scheme() == "http" => {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(pem) = extra_root_pem {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem).flatten() {
                    let _ = roots.add(cert);
                }
            }
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder()
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e2| format!("http client: {e}; without the system roots: {e2}"))
        }
        Err(e) => Err(format!(
            "http client: {e} (no CA certificates found for https: install the \
             ca-certificates package, or give the server's CA as extra root certificates)"
        )),
    }
}
