//! Delegated plugins: find a plugin binary in `CNI_PATH` and exec it with the same
//! environment (only `CNI_COMMAND` may differ) and the complete network configuration on
//! stdin (CNI spec 1.1.0 §"Delegated plugins (IPAM)").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use headcni_core::cni::{CniError, CniResult, ErrorCode};

/// Finds `plugin_type` in the `CNI_PATH` directories (first executable match).
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path {
        let candidate = dir.join(plugin_type);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(CniError::new(
        ErrorCode::Delegate,
        format!("failed to find plugin {plugin_type:?}"),
    )
    .with_details(format!("searched CNI_PATH {path:?}")))
}

/// Execs `binary` with `CNI_COMMAND=command` and `config` on stdin; stderr passes through.
///
/// Returns the delegate's stdout on exit 0. A non-zero exit becomes the delegate's own
/// error (its code is kept) when stdout holds error JSON, else a code-105 error.
pub fn exec(binary: &Path, command: &str, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let mut child = Process::new(binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Delegate,
                format!("failed to exec {}", binary.display()),
            )
            .with_details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits before reading stdin closes the pipe: its exit status tells.
        let _ = stdin.write_all(config);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            ErrorCode::Delegate,
            format!("failed to wait for {}", binary.display()),
        )
        .with_details(e.to_string())
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Err(e),
        Err(_) => Err(CniError::new(
            ErrorCode::Delegate,
            format!("{} {command} failed ({})", binary.display(), out.status),
        )
        .with_details(String::from_utf8_lossy(&out.stdout).into_owned())),
    }
}

/// Execs an IPAM ADD and parses its abbreviated result.
pub fn exec_add(binary: &Path, config: &[u8]) -> Result<CniResult, CniError> {
    let out = exec(binary, "ADD", config)?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            ErrorCode::Delegate,
            "delegated plugin returned invalid JSON",
        )
        .with_details(e.to_string())
    })?;
    CniResult::from_json(&v)
}
