//! A small client of the WireGuard cross-platform UAPI (the text protocol wireguard-go serves
//! on `/run/wireguard/<iface>.sock`; <https://www.wireguard.com/xplatform/>): `set=1` with
//! `key=value` lines ending in an empty line, answered by `errno=N` and an empty line; `get=1`
//! answered by the current configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A UAPI failure.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// The socket could not be used.
    #[error("wireguard UAPI {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// wireguard-go answered `errno=N` (N ≠ 0).
    #[error("wireguard UAPI {path}: errno={errno}")]
    Errno {
        /// Socket path.
        path: PathBuf,
        /// errno.
        errno: i64,
    },
}

/// One peer to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Public key, 32 bytes.
    pub public_key: [u8; 32],
    /// Endpoint (`ip:port`), if known.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs (replacing the previous set).
    pub allowed_ips: Vec<IpNetwork>,
}

/// Lowercase hex of `b` (the UAPI key encoding).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes from 64 hex digits.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The `set=1` body: private key and listen port, `remove` for `removed` peers, then every
/// peer of `peers` with `replace_allowed_ips=true` (sessions of kept peers survive).
pub fn set_body(
    private_key: &[u8; 32],
    listen_port: u16,
    peers: &[PeerConfig],
    removed: &[[u8; 32]],
) -> String {
    let mut s = format!(
        "set=1\nprivate_key={}\nlisten_port={listen_port}\n",
        hex(private_key)
    );
    for r in removed {
        s.push_str(&format!("public_key={}\nremove=true\n", hex(r)));
    }
    for p in peers {
        s.push_str(&format!("public_key={}\n", hex(&p.public_key)));
        if let Some(e) = p.endpoint {
            s.push_str(&format!("endpoint={e}\n"));
        }
        s.push_str("replace_allowed_ips=true\n");
        for a in &p.allowed_ips {
            s.push_str(&format!("allowed_ip={a}\n"));
        }
    }
    s.push('\n');
    s
}

async fn exchange(path: &Path, body: &str) -> Result<String, UapiError> {
    let io = |source| UapiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = tokio::net::UnixStream::connect(path).await.map_err(io)?;
    s.write_all(body.as_bytes()).await.map_err(io)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn errno_of(path: &Path, answer: &str) -> Result<(), UapiError> {
    let errno = answer
        .lines()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(-1);
    if errno == 0 {
        Ok(())
    } else {
        Err(UapiError::Errno {
            path: path.to_path_buf(),
            errno,
        })
    }
}

/// Sends a `set=1` body (see [`set_body`]).
///
/// Errors: [`UapiError::Io`], [`UapiError::Errno`].
pub async fn set(path: &Path, body: &str) -> Result<(), UapiError> {
    let answer = exchange(path, body).await?;
    errno_of(path, &answer)
}

/// `get=1`: the raw `key=value` lines.
///
/// Errors: [`UapiError::Io`], [`UapiError::Errno`].
pub async fn get(path: &Path) -> Result<String, UapiError> {
    let answer = exchange(path, "get=1\n\n").await?;
    errno_of(path, &answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let p = PeerConfig {
            public_key: [1; 32],
            endpoint: Some("10.0.0.2:41641".parse().unwrap()),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
        };
        let b = set_body(&[2; 32], 41641, &[p], &[[3; 32]]);
        assert!(b.starts_with("set=1\nprivate_key=0202"));
        assert!(b.contains(&format!("public_key={}\nremove=true\n", hex(&[3; 32]))));
        assert!(b.contains(
            "endpoint=10.0.0.2:41641\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n"
        ));
        assert!(b.ends_with("\n\n"));
        assert_eq!(unhex32(&hex(&[7; 32])), Some([7; 32]));
        assert_eq!(unhex32("zz"), None);
    }
}
