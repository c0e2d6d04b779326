//! `POST /api/v2/oauth/token`: the OAuth 2.0 client-credentials grant, and the scope rule.
//!
//! Follows Headscale main `hscontrol/api/v2/oauth.go` (the open implementation of Tailscale's
//! endpoint): the body is `application/x-www-form-urlencoded` (Go's `ParseForm`: any other
//! content type leaves the form empty, a malformed body is `400 invalid_request`);
//! `grant_type` absent or `client_credentials` (else `400 unsupported_grant_type`);
//! credentials in the body or HTTP Basic (missing: `401 invalid_client`, wrong:
//! `401 invalid_client`); optional space-delimited `scope` narrowing the client's grant (a
//! scope not granted: `400 invalid_scope`); success `{"access_token","token_type":"Bearer",
//! "expires_in","scope"}` with `Cache-Control: no-store`. Errors are RFC 6749 §5.2 bodies
//! `{"error","error_description"}`. Stricter than Headscale (which derives the client id from
//! the secret): the `client_id` must be sent and match, as Tailscale's documented request
//! sends it and client-go-v2 `oauth.go` (x/oauth2 `clientcredentials`) always does.

use http::{HeaderMap, StatusCode, header};
use serde_json::json;
use tokio::time::Instant;

use super::state::{State, Token, rand_alnum};
use crate::server::{Resp, respond};

/// Whether the `granted` scopes satisfy `want`: exact match, `all` grants everything,
/// `all:read` grants every `:read` scope, a write scope grants its own `:read` subset
/// (Headscale main `hscontrol/scope/scope.go` `Grants`).
pub(super) fn grants(granted: &[String], want: &str) -> bool {
    granted.iter().any(|g| {
        g == want
            || g == "all"
            || (g == "all:read" && want.ends_with(":read"))
            || want.strip_suffix(":read") == Some(g.as_str())
    })
}

fn oauth_error(status: StatusCode, code: &str, desc: &str) -> Resp {
    let mut r = respond(
        status,
        "application/json",
        json!({"error": code, "error_description": desc}).to_string(),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Go's `url.ParseQuery`: `&`-separated `key=value`, `+` is a space, `%XX` escapes; a bad
/// escape or a `;` is an error.
pub(super) fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    let mut out = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(());
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((unescape(k)?, unescape(v)?));
    }
    Ok(out)
}

fn unescape(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(())?;
                let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = v.strip_prefix("Basic ")?;
    let raw = base64_decode(encoded)?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Standard base64 with padding (RFC 4648 §4), as Go's `base64.StdEncoding`.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in b.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

impl State {
    pub(super) fn token_endpoint(&mut self, headers: &HeaderMap, body: &[u8]) -> Resp {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let form = if form_type {
            match parse_form(body) {
                Ok(f) => f,
                Err(()) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "could not parse request body",
                    );
                }
            }
        } else {
            Vec::new()
        };
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let grant = get("grant_type");
        if !grant.is_empty() && grant != "client_credentials" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            );
        }
        let (mut id, mut secret) = (get("client_id"), get("client_secret"));
        if secret.is_empty()
            && let Some((u, p)) = basic_auth(headers)
        {
            (id, secret) = (u, p);
        }
        if secret.is_empty() || id.is_empty() {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "missing client credentials",
            );
        }
        if id != self.opts.client_id || secret != self.opts.client_secret {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "invalid client credentials",
            );
        }
        let requested: Vec<String> = get("scope").split_whitespace().map(String::from).collect();
        let scopes = if requested.is_empty() {
            self.opts.client_scopes.clone()
        } else {
            if let Some(bad) = requested
                .iter()
                .find(|s| !grants(&self.opts.client_scopes, s))
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &format!("scope {bad} is not granted to this client"),
                );
            }
            requested
        };
        let value = format!("tskey-oauthtok-{}", rand_alnum(40));
        let lifetime = self.opts.token_lifetime;
        self.tokens.push(Token {
            value: value.clone(),
            expires_at: Instant::now() + lifetime,
            revoked: false,
            scopes: scopes.clone(),
        });
        let mut r = respond(
            StatusCode::OK,
            "application/json",
            json!({
                "access_token": value,
                "token_type": "Bearer",
                "expires_in": lifetime.as_secs(),
                "scope": scopes.join(" "),
            })
            .to_string(),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rule() {
        let g = |s: &[&str], w| grants(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), w);
        assert!(g(&["devices:routes"], "devices:routes:read"));
        assert!(!g(&["devices:routes:read"], "devices:routes"));
        assert!(g(&["all"], "devices:routes"));
        assert!(g(&["all:read"], "devices:core:read"));
        assert!(!g(&["all:read"], "devices:core"));
        assert!(!g(&["devices:core"], "devices:routes:read"));
    }

    #[test]
    fn form_and_base64() {
        assert_eq!(
            parse_form(b"a=b+c&d=%2F%3a&e").unwrap(),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "/:".into()),
                ("e".into(), String::new())
            ]
        );
        assert!(parse_form(b"a=%zz").is_err());
        assert!(parse_form(b"a=%2").is_err());
        assert!(parse_form(b"a=b;c=d").is_err());
        assert_eq!(base64_decode("dXNlcjpwdw==").unwrap(), b"user:pw");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("YWJ").is_none());
    }
}
