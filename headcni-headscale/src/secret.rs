//! Secrets (the Headscale API key, pre-auth keys): never in `Debug`, `Display` or logs.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

/// Environment variable read by [`Secret::from_env_var`] callers for the Headscale API key.
pub const HEADSCALE_API_KEY_ENV: &str = "HEADSCALE_API_KEY";

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

    /// Reads a secret from `path` (symlinks followed, as in Kubernetes Secret volumes).
    ///
    /// Errors: [`SecretError::InsecurePermissions`] if the file mode allows group or other
    /// access (`mode & 0o077 != 0`), [`SecretError::Io`], [`SecretError::Empty`],
    /// [`SecretError::NotUtf8`].
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
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

    #[test]
    fn missing_file_is_io_error() {
        let err = Secret::load_api_key(Some(Path::new("/nonexistent/headcni/key"))).unwrap_err();
        assert!(matches!(err, SecretError::Io { .. }));
    }
}
