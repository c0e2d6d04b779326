//! The `headcni` and `headcni-daemon` command lines print a failure as one line, never a
//! backtrace, even with `RUST_BACKTRACE=1` (issue 11).

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("headcni: "), "{err}");
    assert!(lines[0].contains(needle), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

#[test]
fn install_of_a_missing_source_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        env!("CARGO_BIN_EXE_headcni"),
        &[
            "install",
            "--bin-dir",
            &tmp.path().join("bin").display().to_string(),
            "--source",
            "/nonexistent/headcni",
        ],
    );
    assert_one_line_error(&out, "/nonexistent/headcni");
}

#[test]
fn a_missing_daemon_config_is_one_line() {
    let out = run(
        env!("CARGO_BIN_EXE_headcni-daemon"),
        &["config", "check", "--config", "/nonexistent/config.toml"],
    );
    assert_one_line_error(&out, "/nonexistent/config.toml");
}
