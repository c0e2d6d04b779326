//! User-facing errors of the lab's binaries are one line and never a backtrace, even with
//! `RUST_BACKTRACE=1` (issue 11: a failed `lab up` printed a Rust backtrace).

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

/// Exit status 1, stderr one line starting with `prefix`, no backtrace.
fn assert_one_line_error(out: &Output, prefix: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with(prefix), "{err}");
    assert!(
        !err.to_lowercase().contains("backtrace"),
        "no backtrace: {err}"
    );
    err
}

#[test]
fn lab_errors_are_one_line_without_a_backtrace() {
    let out = run(
        env!("CARGO_BIN_EXE_headcni-lab"),
        &["status", "--name", &format!("nolab{}", std::process::id())],
    );
    let err = assert_one_line_error(&out, "headcni lab: ");
    assert!(err.contains("is up"), "{err}");
}

#[test]
fn standin_errors_are_one_line_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display();
    let out = run(
        env!("CARGO_BIN_EXE_headscale-standin"),
        &[
            "--listen=127.0.0.1:0",
            &format!("--state-file={dir}/state.json"),
            &format!("--api-key-file={dir}/api-key"),
            "--api=9.9",
        ],
    );
    let err = assert_one_line_error(&out, "headscale-standin: ");
    assert!(err.contains("9.9"), "{err}");
}

#[test]
fn lab_check_answers_without_changing_anything() {
    // The test machine has every tool (scripts/test.sh installs them): exit 0, one line.
    let out = run(env!("CARGO_BIN_EXE_headcni-lab"), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ready"), "{text}");
}
