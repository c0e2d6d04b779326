//! Issue 8, items 5 and 10: secrets never printed by `headcni config check|show` or a failing
//! daemon start; the API key file's owner is checked; every configuration error is reported
//! in one run; an unknown section is an error; suspicious settings are warnings.
//!
//! Most tests drive the `headcni-daemon` binary (what `headcni config ...` and `headcni
//! daemon` exec) with a cleared environment, so they check what a person actually sees.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use headcni_node::config::{
    self, Config, ConfigError, DaemonFlags, Problem, check_from, load_from,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_headcni-daemon");
const SECRET: &str = "s3cret-pw";

/// What one run of the binary printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `headcni-daemon ARGS` with only `env` set. A hang guard kills it after 60 s (the
/// commands under test either answer at once or fail at once; a daemon that got past its
/// configuration would wait for a PodCIDR).
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(DAEMON)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("headcni-daemon {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        ok: status.success(),
        stdout,
        stderr,
    }
}

/// A configuration file in its own temporary directory (which also holds the state dirs).
struct Cfg {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Cfg {
    fn new(toml: &str) -> Cfg {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).unwrap();
        Cfg { dir, path }
    }

    fn p(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn check(&self) -> Run {
        run(&["config", "check", "--config", self.p()], &[])
    }

    fn flags(&self) -> DaemonFlags {
        DaemonFlags {
            config: Some(self.path.clone()),
            ..Default::default()
        }
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Host mode with auto-approvers: valid without a Headscale URL or an API key.
const BASE: &str = "[headscale]\napproval = \"auto-approvers\"\n";

// =============================================================================================
// Item 5: secrets
// =============================================================================================

#[test]
fn url_password_is_never_printed_by_check_show_or_daemon_start() {
    for url in [
        format!("https://admin:{SECRET}@[bad"),
        format!("https://admin:{SECRET}@/x"),
        format!("https://admin:{SECRET}@hs example.com"),
        format!("admin:{SECRET}@hs.example.com"),
        format!("ftp://admin:{SECRET}@hs.example.com/?token={SECRET}"),
    ] {
        let f = Cfg::new(&format!("{BASE}url = \"{url}\"\n"));
        let check = f.check();
        assert!(!check.ok, "{url}: {}", check.all());
        assert!(check.all().contains("headscale.url"), "{}", check.all());
        assert!(check.all().contains("<redacted>"), "{url}: {}", check.all());
        let show = run(&["config", "show", "--config", f.p()], &[]);
        let daemon = run(&["daemon", "--config", f.p()], &[]);
        assert!(!daemon.ok, "{url}: the daemon must refuse to start");
        assert!(daemon.stderr.contains("headscale.url"), "{}", daemon.stderr);
        // the same URL from the flag and from the environment
        let flag = run(
            &[
                "config",
                "check",
                "--config",
                f.p(),
                "--headscale-url",
                &url,
            ],
            &[],
        );
        let env = run(
            &["config", "check", "--config", f.p()],
            &[("HEADCNI_HEADSCALE_URL", &url)],
        );
        for (what, r) in [
            ("check", &check),
            ("show", &show),
            ("daemon", &daemon),
            ("flag", &flag),
            ("env", &env),
        ] {
            assert!(
                !r.all().contains(SECRET),
                "{what} {url} leaked:\n{}",
                r.all()
            );
        }
    }
}

/// The TOML parser quotes the offending line in its error.
#[test]
fn a_broken_file_does_not_quote_the_password() {
    let f = Cfg::new(&format!(
        "{BASE}url = \"https://admin:{SECRET}@hs.example.com\nuser = \"x\"\n"
    ));
    for args in [
        vec!["config", "check", "--config", f.p()],
        vec!["config", "show", "--config", f.p()],
        vec!["daemon", "--config", f.p()],
    ] {
        let r = run(&args, &[]);
        assert!(!r.ok);
        assert!(r.all().contains("TOML"), "{}", r.all());
        assert!(!r.all().contains(SECRET), "{args:?} leaked:\n{}", r.all());
    }
}

fn key_file(dir: &Path, owner: Option<u32>) -> PathBuf {
    let key = dir.join("api-key");
    std::fs::write(&key, "hskey-api-abc-topsecret\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&key, Some(uid), None).unwrap();
    }
    key
}

/// A 0600 key file owned by `nobody` was accepted: that user could rewrite the key.
#[test]
fn key_file_owned_by_nobody_is_refused_root_owned_accepted() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), None);
    let f = Cfg::new(&format!(
        "[headscale]\nurl = \"https://hs.example.com\"\napi_key_file = \"{}\"\n",
        key.display()
    ));
    let ok = f.check();
    assert!(ok.ok, "0600 root-owned is accepted: {}", ok.all());
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let refused = f.check();
    assert!(!refused.ok, "{}", refused.all());
    assert!(
        refused.stdout.contains("headscale.api_key_file")
            && refused.stdout.contains("owned by uid 65534"),
        "{}",
        refused.all()
    );
    assert!(!refused.all().contains("topsecret"));
}

/// A FIFO in place of the key file used to block `config check` (and the daemon) in `open`.
#[test]
fn key_file_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    nix::unistd::mkfifo(&key, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f = Cfg::new(&format!(
        "[headscale]\nurl = \"https://hs.example.com\"\napi_key_file = \"{}\"\n",
        key.display()
    ));
    let r = f.check();
    assert!(!r.ok);
    assert!(
        r.stdout.contains("headscale.api_key_file") && r.stdout.contains("not a regular file"),
        "{}",
        r.all()
    );
}

// =============================================================================================
// Item 10: every error at once, unknown sections, warnings
// =============================================================================================

const MANY_ERRORS: &str = r#"
[cni]
mtu = "big"
bridge = ""
[tailscale]
mode = "cloud"
[daemonx]
listen = "0.0.0.0:8081"
[headscale]
approval = "auto-approvers"
"#;

#[test]
fn check_reports_every_error_in_one_run() {
    let f = Cfg::new(MANY_ERRORS);
    let r = f.check();
    assert!(!r.ok);
    for needle in ["cni.mtu", "cni.bridge", "tailscale.mode", "[daemonx]"] {
        assert!(
            r.stdout.contains(&format!("error: {needle}")),
            "{needle} missing:\n{}",
            r.all()
        );
    }
    assert!(r.stderr.contains("4 problems"), "{}", r.all());
    // the daemon refuses with all of them too
    let d = run(&["daemon", "--config", f.p()], &[]);
    assert!(!d.ok);
    for needle in ["cni.mtu", "cni.bridge", "tailscale.mode", "daemonx"] {
        assert!(d.stderr.contains(needle), "{needle}: {}", d.stderr);
    }
}

#[test]
fn check_from_collects_values_sections_and_validation() {
    let f = Cfg::new(MANY_ERRORS);
    let c = check_from(&f.flags(), &no_env).unwrap();
    let keys: Vec<&str> = c.errors.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 4, "{:?}", c.errors);
    for k in ["cni.mtu", "cni.bridge", "tailscale.mode", "[daemonx]"] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    // bad values keep their defaults, and a bad value is not also reported by validation
    assert_eq!(c.loaded.config.cni.mtu, None);
    assert!(matches!(
        c.clone().into_result(),
        Err(ConfigError::Invalid { problems }) if problems.len() == 4
    ));
    // load_from: one value error keeps its type, several are one Invalid
    let one = Cfg::new("[cni]\nmtu = \"big\"\n");
    assert!(matches!(
        load_from(&one.flags(), &no_env),
        Err(ConfigError::InvalidValue { key, .. }) if key == "cni.mtu"
    ));
    assert!(matches!(
        load_from(&f.flags(), &no_env),
        Err(ConfigError::Invalid { problems }) if problems.len() == 3
    ));
}

#[test]
fn an_unknown_section_is_an_error() {
    let f = Cfg::new(&format!("{BASE}[daemonx]\nlisten = \"0.0.0.0:8081\"\n"));
    let r = f.check();
    assert!(!r.ok, "{}", r.all());
    assert!(
        r.stdout.contains("unknown section [daemonx]"),
        "{}",
        r.all()
    );
    match load_from(&f.flags(), &no_env) {
        Err(ConfigError::UnknownSection { section, path }) => {
            assert_eq!(section, "daemonx");
            assert_eq!(path, f.path);
        }
        other => panic!("{other:?}"),
    }
    // an empty one too: the typo is the same
    let f = Cfg::new(&format!("{BASE}[daemonx]\n"));
    assert!(!f.check().ok);
    // unknown keys inside a known section stay warnings
    let f = Cfg::new(&format!("{BASE}[daemon]\nlisten_addr = \"0.0.0.0:1\"\n"));
    let r = f.check();
    assert!(r.ok, "{}", r.all());
    assert!(
        r.stdout.contains("warning: unknown key daemon.listen_addr"),
        "{}",
        r.all()
    );
}

fn warnings_of(toml: &str) -> Vec<Problem> {
    let f = Cfg::new(&format!("{BASE}{toml}"));
    let c = check_from(&f.flags(), &no_env).unwrap();
    assert!(c.errors.is_empty(), "{toml}: {:?}", c.errors);
    c.warnings
}

/// Each suspicious setting: `config check` still succeeds, and prints the warning.
#[test]
fn suspicious_settings_are_warnings() {
    for (toml, key, needle) in [
        (
            "[node]\npod_cidr = \"100.64.1.0/24\"\n",
            "node.pod_cidr",
            "100.64.0.0/10",
        ),
        (
            "[node]\npod_cidr = \"100.0.0.0/8\"\n",
            "node.pod_cidr",
            "100.64.0.0/10",
        ),
        (
            "[node]\npod_cidr = \"0.1.0.0/24\"\n",
            "node.pod_cidr",
            "0.0.0.0/8",
        ),
        (
            "[node]\npod_cidr = \"127.1.0.0/24\"\n",
            "node.pod_cidr",
            "127.0.0.0/8",
        ),
        (
            "[node]\npod_cidr = \"224.1.0.0/24\"\n",
            "node.pod_cidr",
            "224.0.0.0/4",
        ),
        (
            "[node]\npod_cidr = \"fd7a:115c:a1e0:1::/64\"\n",
            "node.pod_cidr",
            "fd7a:115c:a1e0::/48",
        ),
        (
            "[node]\npod_cidr = \"10.244.1.0/24\"\ncluster_cidr = \"0.0.0.0/0\"\n",
            "node.cluster_cidr",
            "never masqueraded",
        ),
        (
            "[daemon]\nlisten = \"0.0.0.0:8081\"\n",
            "daemon.listen",
            "/status and /metrics",
        ),
        (
            "[daemon]\nlisten = \"[::]:8081\"\n",
            "daemon.listen",
            "expose_to_network",
        ),
    ] {
        let w = warnings_of(toml);
        assert_eq!(w.len(), 1, "{toml}: {w:?}");
        assert_eq!(w[0].key, key, "{toml}");
        assert!(w[0].message.contains(needle), "{toml}: {}", w[0].message);

        let f = Cfg::new(&format!("{BASE}{toml}"));
        let r = f.check();
        assert!(r.ok, "a warning is not an error: {}", r.all());
        assert!(
            r.stdout.contains(&format!("warning: {key}: ")) && r.stdout.contains(needle),
            "{toml}: {}",
            r.all()
        );
    }
}

#[test]
fn ordinary_settings_and_acknowledged_exposure_do_not_warn() {
    assert!(warnings_of("").is_empty());
    assert!(
        warnings_of("[node]\npod_cidr = \"10.244.1.0/24\"\ncluster_cidr = \"10.244.0.0/16\"\n")
            .is_empty()
    );
    assert!(warnings_of("[daemon]\nlisten = \"[::1]:8081\"\n").is_empty());
    assert!(
        warnings_of("[daemon]\nlisten = \"0.0.0.0:8081\"\nexpose_to_network = true\n").is_empty()
    );
    let f = Cfg::new(&format!("{BASE}[daemon]\nlisten = \"0.0.0.0:8081\"\n"));
    let r = run(
        &["config", "check", "--config", f.p()],
        &[("HEADCNI_DAEMON_EXPOSE_TO_NETWORK", "true")],
    );
    assert!(r.ok && !r.stdout.contains("warning"), "{}", r.all());
    // Config::warnings is the same list
    let mut c = Config::default();
    c.daemon.listen = "10.0.0.1:8081".parse().unwrap();
    assert_eq!(c.warnings().len(), 1);
    assert_eq!(config::cidr_warnings("PodCIDR", &[]).len(), 0);
}

/// The daemon logs the warnings at start, before anything else can fail: here the listen
/// address (TEST-NET-1, on no interface) cannot be bound, so it exits right after.
#[test]
fn the_daemon_logs_warnings_at_start() {
    let f = Cfg::new(&format!(
        "{BASE}[node]\npod_cidr = \"100.64.1.0/24\"\n[daemon]\nlisten = \"192.0.2.1:1\"\n"
    ));
    let state = f.dir.path().join("state");
    let d = run(
        &["daemon", "--config", f.p()],
        &[("HEADCNI_DAEMON_STATE_DIR", state.to_str().unwrap())],
    );
    assert!(!d.ok, "binding 192.0.2.1 must fail: {}", d.all());
    assert!(
        d.stderr.contains("node.pod_cidr") && d.stderr.contains("100.64.0.0/10"),
        "{}",
        d.stderr
    );
    assert!(
        d.stderr.contains("daemon.listen") && d.stderr.contains("/status and /metrics"),
        "{}",
        d.stderr
    );
}
