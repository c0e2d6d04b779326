//! Delegated plugins: find a plugin binary in `CNI_PATH` and exec it with the same
//! environment (only `CNI_COMMAND` may differ) and the complete network configuration on
//! stdin (CNI spec 1.1.0 §"Delegated plugins (IPAM)").
//!
//! Every call is bounded: the delegate runs in its own process group, is killed with it
//! (`SIGKILL`) and reaped when it exceeds its time limit or writes more than
//! [`MAX_DELEGATE_OUTPUT_BYTES`] to stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use headcni_core::cni::{CniError, CniResult, ErrorCode, validate_plugin_type};

/// The most bytes read from a delegate's stdout: 1 MiB (an IPAM result is a few hundred
/// bytes; the bound keeps a runaway delegate from filling the plugin's memory).
pub const MAX_DELEGATE_OUTPUT_BYTES: usize = 1 << 20;

/// Finds `plugin_type` in the `CNI_PATH` directories: the first `dir/<plugin_type>` that is
/// an executable regular file (after following symlinks) and whose canonical path lies
/// inside the canonical `dir` (a symlink pointing out of its `CNI_PATH` directory is
/// refused). Returns `dir/<plugin_type>` itself (not the resolved path: a plugin may be
/// dispatched by its `argv[0]`, as `headcni-ipam` is).
///
/// Errors: code 7 when `plugin_type` is not a file name ([`validate_plugin_type`]: a name
/// from the configuration never becomes a path); code 105 (HeadCNI's delegate code) when no
/// directory holds it or the match resolves outside its directory (the configuration is
/// fine, the node's plugin installation is not).
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    validate_plugin_type(plugin_type)?;
    for dir in path {
        let candidate = dir.join(plugin_type);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let inside = match (
            std::fs::canonicalize(dir),
            std::fs::canonicalize(&candidate),
        ) {
            (Ok(d), Ok(c)) => c.starts_with(&d),
            _ => false,
        };
        if !inside {
            return Err(CniError::new(
                ErrorCode::Delegate,
                format!("refusing plugin {plugin_type:?}"),
            )
            .with_details(format!(
                "{} resolves outside its CNI_PATH directory {}",
                candidate.display(),
                dir.display()
            )));
        }
        return Ok(candidate);
    }
    Err(CniError::new(
        ErrorCode::Delegate,
        format!("failed to find plugin {plugin_type:?}"),
    )
    .with_details(format!("searched CNI_PATH {path:?}")))
}

/// What the helper threads of [`exec`] report.
enum Event {
    /// stdout up to EOF, or `None` when it exceeded [`MAX_DELEGATE_OUTPUT_BYTES`].
    Stdout(std::io::Result<Option<Vec<u8>>>),
    /// The delegate exited; it stays a zombie (not reaped) so that its pid, which is also
    /// its process group's id, cannot be reused before the group is killed.
    Exited(Result<(), nix::errno::Errno>),
}

/// Waits until `pid` has exited without reaping it (`waitid(WEXITED | WNOWAIT)`).
fn wait_exited_unreaped(pid: u32) -> Result<(), nix::errno::Errno> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map(|_| ()),
        }
    }
}

fn kill_group(pgid: u32) {
    if let Ok(pid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Execs `binary` with the request's `CNI_*` variables `cni_vars` (replacing any inherited
/// ones), `CNI_COMMAND=command` and `config` on stdin, in a new process group; stderr passes
/// through. Returns the delegate's stdout on exit 0.
///
/// Bounds: the delegate and its process group are killed with `SIGKILL` and reaped when it
/// runs longer than `timeout` or writes more than [`MAX_DELEGATE_OUTPUT_BYTES`] to stdout.
///
/// Errors (codes from CNI spec 1.1.0 §"Error" where one fits):
/// - timeout → code 11 (try again later): a delegate that hangs is most often waiting for
///   something transient (a DHCP server, a lock held by a stuck peer), and the runtime
///   retries the verb;
/// - stdout larger than the limit → code 6 (failed to decode content): the answer cannot be
///   an IPAM result;
/// - a non-zero exit → the delegate's own error (its code is kept) when stdout holds error
///   JSON, else code 105; failing to spawn or wait → code 105.
pub fn exec(
    binary: &Path,
    command: &str,
    cni_vars: &[(OsString, OsString)],
    config: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let deadline = Instant::now() + timeout;
    let delegate_err = |msg: String, details: String| {
        CniError::new(ErrorCode::Delegate, msg).with_details(details)
    };
    let mut process = Process::new(binary);
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"CNI_") {
            process.env_remove(k);
        }
    }
    let mut child = process
        .envs(cni_vars.iter().map(|(k, v)| (k, v)))
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            delegate_err(
                format!("failed to exec {}", binary.display()),
                e.to_string(),
            )
        })?;
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    if let Some(mut stdin) = child.stdin.take() {
        let config = config.to_vec();
        // A plugin that exits before reading stdin closes the pipe: its exit status tells.
        // The writer ends when the group is killed (EPIPE) at the latest.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&config);
        });
    }
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = stdout
                .take(MAX_DELEGATE_OUTPUT_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map(|n| (n <= MAX_DELEGATE_OUTPUT_BYTES).then_some(buf));
            let _ = tx.send(Event::Stdout(r));
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(wait_exited_unreaped(pgid)));
    });

    let mut stdout: Option<Vec<u8>> = None;
    let mut exited = false;
    let mut failure: Option<CniError> = None;
    while failure.is_none() && (stdout.is_none() || !exited) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Stdout(Ok(Some(out)))) => stdout = Some(out),
            Ok(Event::Stdout(Ok(None))) => {
                failure = Some(
                    CniError::new(
                        ErrorCode::Decode,
                        format!("{} {command} wrote too much output", binary.display()),
                    )
                    .with_details(format!(
                        "more than {MAX_DELEGATE_OUTPUT_BYTES} bytes on stdout; killed"
                    )),
                );
            }
            Ok(Event::Stdout(Err(e))) => {
                failure = Some(delegate_err(
                    format!("failed to read the output of {}", binary.display()),
                    e.to_string(),
                ));
            }
            Ok(Event::Exited(Ok(()))) => exited = true,
            Ok(Event::Exited(Err(e))) => {
                failure = Some(delegate_err(
                    format!("failed to wait for {}", binary.display()),
                    e.to_string(),
                ));
            }
            Err(_) => {
                failure = Some(
                    CniError::new(
                        ErrorCode::TryAgainLater,
                        format!("{} {command} timed out", binary.display()),
                    )
                    .with_details(format!(
                        "no answer within {} s (delegateTimeoutSeconds); killed",
                        timeout.as_secs_f64()
                    )),
                );
            }
        }
    }
    if let Some(err) = failure {
        // The leader is not reaped yet, so its pid still names this group only.
        kill_group(pgid);
        let _ = child.wait();
        return Err(err);
    }
    let status = child.wait().map_err(|e| {
        delegate_err(
            format!("failed to wait for {}", binary.display()),
            e.to_string(),
        )
    })?;
    let out = stdout.unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    match serde_json::from_slice::<CniError>(&out) {
        Ok(e) => Err(e),
        Err(_) => Err(delegate_err(
            format!("{} {command} failed ({status})", binary.display()),
            String::from_utf8_lossy(&out).chars().take(4096).collect(),
        )),
    }
}

/// Execs an IPAM ADD and parses its abbreviated result (bounds and errors as [`exec`]).
pub fn exec_add(
    binary: &Path,
    cni_vars: &[(OsString, OsString)],
    config: &[u8],
    timeout: Duration,
) -> Result<CniResult, CniError> {
    let out = exec(binary, "ADD", cni_vars, config, timeout)?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            ErrorCode::Delegate,
            "delegated plugin returned invalid JSON",
        )
        .with_details(e.to_string())
    })?;
    CniResult::from_json(&v)
}
