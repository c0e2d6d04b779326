//! Running a firewall tool (`iptables`, `iptables-restore`, ...) bounded in time and output.
//!
//! The child inherits the calling thread's network namespace (see the crate docs). stdout and
//! stderr are read on their own threads while the child runs (a chatty child never blocks
//! on a full pipe), each kept up to a cap and the rest discarded; a child that outlives its
//! time budget is killed and reaped.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// What a finished child produced.
#[derive(Debug)]
pub(crate) struct Output {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its stdout (lossy UTF-8), at most the cap.
    pub stdout: String,
    /// Its stderr (lossy UTF-8), at most the cap, trimmed.
    pub stderr: String,
}

impl Output {
    /// stderr, else stdout, else "exit status non-zero": the reason a run failed.
    pub fn reason(&self) -> String {
        if !self.stderr.is_empty() {
            self.stderr.clone()
        } else if !self.stdout.trim().is_empty() {
            self.stdout.trim().to_owned()
        } else {
            "non-zero exit status".to_owned()
        }
    }
}

/// Why a child could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// It could not be started (not installed, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// It did not finish within the budget and was killed.
    #[error("{program} did not finish within {budget:?} and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The budget.
        budget: Duration,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
}

fn reader(
    pipe: Option<impl Read + Send + 'static>,
    cap: usize,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = (&mut p).take(cap as u64).read_to_end(&mut buf);
            let _ = std::io::copy(&mut p, &mut std::io::sink());
        }
        buf
    })
}

/// Runs `program args` with `input` on stdin (or `/dev/null`), waits at most `budget`, keeps
/// at most `cap` bytes of each of stdout and stderr.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
    budget: Duration,
    cap: usize,
) -> Result<Output, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let out = reader(child.stdout.take(), cap);
    let err = reader(child.stderr.take(), cap);
    let writer = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let status = match child.wait_timeout(budget) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Timeout {
                program: program.to_owned(),
                budget,
            });
        }
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Wait {
                program: program.to_owned(),
                source,
            });
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_a_slow_child_is_killed() {
        let o = run(
            "sh",
            &["-c", "head -c 100000 /dev/zero; echo oops >&2; exit 3"],
            None,
            Duration::from_secs(10),
            1000,
        )
        .unwrap();
        assert!(!o.success);
        assert_eq!(o.stdout.len(), 1000);
        assert_eq!(o.reason(), "oops");
        let e = run(
            "sh",
            &["-c", "sleep 30"],
            None,
            Duration::from_millis(100),
            10,
        )
        .unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        let o = run("cat", &[], Some("hello"), Duration::from_secs(5), 100).unwrap();
        assert_eq!(o.stdout, "hello");
        assert!(matches!(
            run("/nonexistent/x", &[], None, Duration::from_secs(1), 1),
            Err(RunError::Spawn { .. })
        ));
    }
}
