//! Secrets (the Headscale API key, pre-auth keys): never in `Debug`, `Display` or logs.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

/// Environment variable read by [`Secret::from_env_var`] callers for the Headscale API key.
pub const HEADSCALE_API_KEY_ENV: &str = "HEADSCALE_API_KEY";

/// The largest secret file [`Secret::from_file`] reads, in bytes (a Headscale API key is about
/// 50 bytes; anything this large is not a key file).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// What [`redact_url`] puts in place of a secret part.
pub const REDACTED: &str = "<redacted>";

/// An opaque secret string (API key, pre-auth key).
///
/// `Debug` prints `Secret(<redacted>)`; there is no `Display`; the bytes are zeroed on drop.
/// Read the value only with [`Secret::expose`], at the point where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Errors loading a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be opened, inspected or read.
    #[error("cannot read secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by group or others (mode `& 0o077 != 0`).
    #[error(
        "secret file {path} has mode {mode:04o}, readable by group or others; \
         make it 0400 or 0600 (Kubernetes: set defaultMode: 0400 on the Secret volume)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is owned by a user other than root or the daemon's effective uid, so that
    /// user could replace the key (or read it after a `chmod`).
    #[error(
        "secret file {path} is owned by uid {uid}; it must be owned by root (uid 0) or by the \
         daemon's own uid {euid}"
    )]
    InsecureOwner {
        /// The file (as configured; the check is on the file finally opened).
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The reading process's effective uid.
        euid: u32,
    },
    /// The path does not lead to a regular file (a FIFO, a device, a directory, a socket).
    #[error("secret file {path} is not a regular file")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_SECRET_FILE_BYTES`].
    #[error("secret file {path} is larger than {max} bytes; it is not a key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, [`MAX_SECRET_FILE_BYTES`].
        max: u64,
    },
    /// The file or variable holds nothing but whitespace.
    #[error("secret from {source_name} is empty")]
    Empty {
        /// Where it came from (a path or an environment variable name).
        source_name: String,
    },
    /// The file or variable is not UTF-8.
    #[error("secret from {source_name} is not valid UTF-8")]
    NotUtf8 {
        /// Where it came from.
        source_name: String,
    },
    /// Neither a file nor the environment variable provided the secret.
    #[error("no secret configured: set a key file or the {env} environment variable")]
    Missing {
        /// The environment variable that was consulted.
        env: String,
    },
}

impl Secret {
    /// Wraps a value. Surrounding whitespace (a trailing newline from `echo >file`) is removed.
    pub fn new(value: impl Into<String>) -> Self {
        let mut v: String = value.into();
        let trimmed = v.trim().to_string();
        v.zeroize();
        Secret(trimmed)
    }

    /// The secret value, for the single place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from `path`.
    ///
    /// Symlinks are followed, because Kubernetes Secret volumes are symlinks
    /// (`key -> ..data/key -> ..2024_01_01_00_00_00.0/key`); every check is made with `fstat`
    /// on the descriptor actually opened, so it is about the final target and cannot race a
    /// swapped link. The open is non-blocking, so a FIFO in place of the file is refused
    /// instead of hanging the caller.
    ///
    /// Errors: [`SecretError::NotRegularFile`] unless the target is a regular file;
    /// [`SecretError::InsecureOwner`] unless it is owned by root or the caller's effective uid;
    /// [`SecretError::InsecurePermissions`] if its mode allows group or other access
    /// (`mode & 0o077 != 0`); [`SecretError::TooLarge`] above [`MAX_SECRET_FILE_BYTES`];
    /// [`SecretError::Io`], [`SecretError::Empty`], [`SecretError::NotUtf8`].
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(SecretError::NotRegularFile {
                path: path.to_path_buf(),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(SecretError::InsecureOwner {
                path: path.to_path_buf(),
                uid: meta.uid(),
                euid,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let too_large = || SecretError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_SECRET_FILE_BYTES,
        };
        if meta.len() > MAX_SECRET_FILE_BYTES {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        let read = (&mut file)
            .take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes);
        if let Err(e) = read {
            bytes.zeroize();
            return Err(io(e));
        }
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            bytes.zeroize();
            return Err(too_large());
        }
        let name = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            let mut b = e.into_bytes();
            b.zeroize();
            SecretError::NotUtf8 {
                source_name: name.clone(),
            }
        })?;
        let s = Secret::new(text);
        if s.0.is_empty() {
            return Err(SecretError::Empty { source_name: name });
        }
        Ok(s)
    }

    /// Reads a secret from the environment variable `var`; `Ok(None)` when it is unset.
    ///
    /// Errors: [`SecretError::Empty`], [`SecretError::NotUtf8`].
    pub fn from_env_var(var: &str) -> Result<Option<Self>, SecretError> {
        match std::env::var(var) {
            Ok(v) => {
                let s = Secret::new(v);
                if s.0.is_empty() {
                    Err(SecretError::Empty {
                        source_name: var.to_string(),
                    })
                } else {
                    Ok(Some(s))
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUtf8 {
                source_name: var.to_string(),
            }),
        }
    }

    /// Loads the Headscale API key: from `file` when given, else from the
    /// [`HEADSCALE_API_KEY_ENV`] environment variable.
    ///
    /// Errors: those of [`Secret::from_file`] / [`Secret::from_env_var`], or
    /// [`SecretError::Missing`] when neither is set.
    pub fn load_api_key(file: Option<&Path>) -> Result<Self, SecretError> {
        if let Some(path) = file {
            return Secret::from_file(path);
        }
        Secret::from_env_var(HEADSCALE_API_KEY_ENV)?.ok_or_else(|| SecretError::Missing {
            env: HEADSCALE_API_KEY_ENV.to_string(),
        })
    }
}

/// Whether `s` holds a Headscale or Tailscale key (`hskey-…`, `tskey-…`) anywhere.
pub fn looks_like_key(s: &str) -> bool {
    s.contains("hskey-") || s.contains("tskey-")
}

/// `s` (a URL, or what was meant to be one) without its secrets, for messages and logs.
///
/// Works on text that does not parse as a URL too (the error path is where a password would
/// otherwise be printed): after an optional `scheme://`, everything up to the last `@` is
/// userinfo and becomes [`REDACTED`]; a query (`?…`) or fragment (`#…`) after the host becomes
/// [`REDACTED`]; text holding an `hskey-`/`tskey-` key is replaced whole. Over-redacts rather
/// than leaks: `https://h/a@b` becomes `https://<redacted>@b`.
///
/// ```
/// # use headcni_headscale::secret::redact_url;
/// assert_eq!(
///     redact_url("https://user:s3cret@[bad/x?token=t"),
///     "https://<redacted>@[bad/x?<redacted>"
/// );
/// assert_eq!(redact_url("https://hs.example.com/p"), "https://hs.example.com/p");
/// ```
pub fn redact_url(s: &str) -> String {
    if looks_like_key(s) {
        return REDACTED.to_owned();
    }
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), s),
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((_, host)) => (format!("{REDACTED}@"), host),
        None => (String::new(), rest),
    };
    let rest = match rest.find(['?', '#']) {
        Some(i) => format!("{}{}{REDACTED}", &rest[..i], &rest[i..=i]),
        None => rest.to_owned(),
    };
    format!("{scheme}{userinfo}{rest}")
}

/// `text` with every URL-like word passed through [`redact_url`] and every word holding a key
/// replaced: for messages that may quote configuration text (a TOML parser's excerpt of the
/// offending line). Words are split at whitespace and quotes.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") || word.contains('@') || looks_like_key(word) {
            out.push_str(&redact_url(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hskey-api-abc-supersecret\n");
        assert_eq!(s.expose(), "hskey-api-abc-supersecret");
        let d = format!("{s:?} {:?}", Some(&s));
        assert!(!d.contains("supersecret"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    fn write_key(mode: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api-key");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "hskey-api-x-topsecret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn file_0644_refused() {
        let dir = write_key(0o644);
        let err = Secret::from_file(&dir.path().join("api-key")).unwrap_err();
        assert!(matches!(
            err,
            SecretError::InsecurePermissions { mode: 0o644, .. }
        ));
        let msg = err.to_string();
        assert!(msg.contains("0644") && msg.contains("0400"), "{msg}");
        assert!(!msg.contains("topsecret"));
    }

    #[test]
    fn file_0640_refused_0600_and_0400_accepted() {
        let dir = write_key(0o640);
        assert!(Secret::from_file(&dir.path().join("api-key")).is_err());
        for mode in [0o600, 0o400] {
            let dir = write_key(mode);
            let s = Secret::from_file(&dir.path().join("api-key")).unwrap();
            assert_eq!(s.expose(), "hskey-api-x-topsecret");
        }
    }

    #[test]
    fn empty_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::Empty { .. })
        ));
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Issue 8 item 5: a 0600 key file owned by `nobody` was accepted.
    #[test]
    fn file_owned_by_another_user_refused_root_owned_accepted() {
        if !is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = write_key(0o600);
        let p = dir.path().join("api-key");
        Secret::from_file(&p).expect("0600 root-owned is accepted");
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let err = Secret::from_file(&p).unwrap_err();
        assert!(
            matches!(
                err,
                SecretError::InsecureOwner {
                    uid: 65534,
                    euid: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("65534") && msg.contains("root"), "{msg}");
        assert!(!msg.contains("topsecret"));
    }

    /// Kubernetes Secret volumes are symlink chains: followed, and the checks are about the
    /// file finally opened (a link to a `nobody`-owned file is refused).
    #[test]
    fn symlinks_are_followed_and_the_target_is_checked() {
        let dir = write_key(0o600);
        let data = dir.path().join("..2024_01_01");
        std::fs::create_dir(&data).unwrap();
        std::fs::rename(dir.path().join("api-key"), data.join("api-key")).unwrap();
        std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/api-key", dir.path().join("api-key")).unwrap();
        let link = dir.path().join("api-key");
        assert_eq!(
            Secret::from_file(&link).unwrap().expose(),
            "hskey-api-x-topsecret"
        );
        if is_root() {
            std::os::unix::fs::chown(data.join("api-key"), Some(65534), None).unwrap();
            assert!(matches!(
                Secret::from_file(&link),
                Err(SecretError::InsecureOwner { uid: 65534, .. })
            ));
        }
    }

    /// A FIFO in place of the key file is refused at once (it used to block in `open`).
    #[test]
    fn fifo_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api-key");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A hang guard, not a timing assertion: the old code blocked forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Secret::from_file(&q));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("from_file hung on a FIFO");
        assert!(
            matches!(r, Err(SecretError::NotRegularFile { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn directory_and_oversized_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            Secret::from_file(dir.path()),
            Err(SecretError::NotRegularFile { .. })
        ));
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'k'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::TooLarge { .. })
        ));
    }

    #[test]
    fn urls_are_redacted_even_when_they_do_not_parse() {
        for (input, want) in [
            ("https://user:s3cret@[bad", "https://<redacted>@[bad"),
            (
                "https://user:s3cret@hs.example.com/x?token=abc#frag",
                "https://<redacted>@hs.example.com/x?<redacted>",
            ),
            ("https://u:pa/s3cret@h", "https://<redacted>@h"),
            ("https://u:p?s3cret@h", "https://<redacted>@h"),
            ("user:s3cret@hs.example.com", "<redacted>@hs.example.com"),
            ("https:/user:s3cret@h", "<redacted>@h"),
            ("https://h/#s3cret", "https://h/#<redacted>"),
            ("hskey-api-s3cret", "<redacted>"),
            (
                "https://hs.example.com:8443/p",
                "https://hs.example.com:8443/p",
            ),
        ] {
            assert_eq!(redact_url(input), want, "{input}");
        }
        let text = "TOML parse error at line 2\n  |\n2 | url = \"https://admin:s3cret@[bad\n  |       ^\nkey = hskey-api-s3cret";
        let out = redact_urls_in(text);
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("line 2") && out.contains("url = "), "{out}");
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = Secret::load_api_key(Some(Path::new("/nonexistent/headcni/key"))).unwrap_err();
        assert!(matches!(err, SecretError::Io { .. }));
    }
}
