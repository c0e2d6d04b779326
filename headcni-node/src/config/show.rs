//! Redaction and display: the effective configuration as TOML with secrets redacted
//! ([`Config::to_redacted_toml`]) and the text of `headcni config show` ([`render_show`]).

use headcni_headscale::secret::{REDACTED, looks_like_key, redact_url};

use super::load::Loaded;
use super::schema::{API_KEY_ENV, Approval, Config, DEFAULT_CONFIG_PATH};

impl Config {
    /// Where the API key will come from, for people (never the key itself).
    pub fn api_key_source(&self) -> String {
        self.api_key_source_with(&|k| std::env::var(k).ok())
    }

    fn api_key_source_with(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        if self.headscale.approval == Approval::AutoApprovers {
            return "none needed (approval = \"auto-approvers\")".to_owned();
        }
        if self.headscale.approval == Approval::TailscaleApi {
            return self.tailscale_api_source();
        }
        match &self.headscale.api_key_file {
            Some(f) => format!("file {}", f.display()),
            None if env(API_KEY_ENV).is_some_and(|v| !v.trim().is_empty()) => {
                format!("env {API_KEY_ENV} (set)")
            }
            None => format!("none (set headscale.api_key_file or {API_KEY_ENV})"),
        }
    }

    /// Where the Tailscale API's OAuth client comes from (never its secret).
    fn tailscale_api_source(&self) -> String {
        match &self.tailscale_api.oauth_file {
            Some(f) => format!(
                "none needed (approval = \"tailscale-api\"); OAuth client: file {}",
                f.display()
            ),
            None => "none needed (approval = \"tailscale-api\"); OAuth client: none (set \
                     tailscale_api.oauth_file)"
                .to_owned(),
        }
    }

    /// The effective configuration as TOML, mode-dependent defaults filled in, with anything
    /// secret-looking redacted and a comment naming the API key's source.
    pub fn to_redacted_toml(&self) -> String {
        self.to_redacted_toml_with(&|k| std::env::var(k).ok())
    }

    pub(super) fn to_redacted_toml_with(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        let mut eff = self.clone();
        eff.node.name = Some(self.node_name());
        eff.tailscale.socket = Some(self.tailscale_socket());
        eff.tailscale.interface = Some(self.interface());
        eff.tailscale.state_dir = Some(self.tailscaled_state_dir());
        let mut value = match toml::Value::try_from(&eff) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        redact(&mut value, None);
        let body = toml::to_string_pretty(&value)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"));
        format!(
            "# HeadCNI effective configuration (secrets redacted)\n# API key: {}\n{body}",
            self.api_key_source_with(env)
        )
    }
}

/// A key name that suggests a secret value (paths to secrets are fine).
fn secret_key_name(k: &str) -> bool {
    let l = k.to_ascii_lowercase();
    if l.ends_with("file") || l.ends_with("path") || l.ends_with("_dir") {
        return false;
    }
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| l.contains(w))
}

fn redact(v: &mut toml::Value, key: Option<&str>) {
    match v {
        toml::Value::String(s) => {
            if key.is_some_and(secret_key_name) || looks_like_key(s) {
                *s = REDACTED.to_owned();
            } else if s.contains("://")
                || key.is_some_and(|k| k.to_ascii_lowercase().ends_with("url"))
            {
                *s = redact_url(s);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                redact(x, Some(k));
            }
        }
        toml::Value::Array(a) => {
            for x in a {
                redact(x, key);
            }
        }
        _ => {}
    }
}

/// The text of `headcni config show`: the sources, then the redacted effective TOML.
pub fn render_show(loaded: &Loaded, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    match &loaded.file {
        Some(f) => out.push_str(&format!("# file: {}\n", f.display())),
        None => out.push_str(&format!(
            "# file: {DEFAULT_CONFIG_PATH} (absent: defaults)\n"
        )),
    }
    out.push_str("# values not at their defaults:\n");
    if loaded.origins.is_empty() {
        out.push_str("#   (none)\n");
    }
    for (k, o) in &loaded.origins {
        out.push_str(&format!("#   {k}: {o}\n"));
    }
    let c = &loaded.config;
    if !loaded.origins.contains_key("node.name") {
        out.push_str("#   node.name: hostname\n");
    }
    let mode = c.tailscale.mode.as_str();
    for (k, set) in [
        ("tailscale.socket", c.tailscale.socket.is_some()),
        ("tailscale.interface", c.tailscale.interface.is_some()),
    ] {
        if !set {
            out.push_str(&format!("#   {k}: default for mode {mode:?}\n"));
        }
    }
    for k in &loaded.unknown_keys {
        out.push_str(&format!("#   {k}: unknown key, ignored\n"));
    }
    for w in c.warnings() {
        out.push_str(&format!("# warning: {w}\n"));
    }
    out.push_str(&c.to_redacted_toml_with(env));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://user:pw@hs.example.com/x?token=abc"),
            "https://<redacted>@hs.example.com/x?<redacted>"
        );
        assert_eq!(
            redact_url("https://hs.example.com"),
            "https://hs.example.com"
        );
        assert!(secret_key_name("apiKey") && secret_key_name("token"));
        assert!(!secret_key_name("api_key_file") && !secret_key_name("portMappings"));
        let mut c = Config::default();
        c.headscale.url = Some("https://admin:hunter2@hs.example.com".into());
        c.headscale.api_key_file = Some("/etc/headcni/api-key".into());
        c.cni.chained.push(serde_json::json!({
            "type": "x", "apiToken": "abc123", "nested": {"password": "pw1"},
            "args": ["hskey-api-leak"], "keyFile": "/etc/x.pem"
        }));
        let out = c.to_redacted_toml_with(&no_env);
        for secret in ["hunter2", "abc123", "pw1", "hskey-api-leak"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("/etc/headcni/api-key"));
        assert!(out.contains("/etc/x.pem"));
        assert!(out.contains("# API key: file /etc/headcni/api-key"));
        let env = |k: &str| (k == API_KEY_ENV).then(|| "hskey-api-secret".to_owned());
        c.headscale.api_key_file = None;
        let out = c.to_redacted_toml_with(&env);
        assert!(out.contains("env HEADSCALE_API_KEY (set)"));
        assert!(!out.contains("hskey-api-secret"));
    }

    #[test]
    fn tailscale_api_section_is_shown_with_its_file_and_redacted_url() {
        let mut c = Config::default();
        c.headscale.approval = Approval::TailscaleApi;
        c.tailscale_api.url = "https://ops:tskey-api-leak@api.example.com".into();
        c.tailscale_api.oauth_file = Some("/etc/headcni/tailscale-oauth".into());
        let out = c.to_redacted_toml_with(&no_env);
        assert!(!out.contains("tskey-api-leak"), "{out}");
        assert!(out.contains("[tailscale_api]"), "{out}");
        assert!(
            out.contains("oauth_file = \"/etc/headcni/tailscale-oauth\""),
            "{out}"
        );
        assert!(
            out.contains("# API key: none needed (approval = \"tailscale-api\"); OAuth client: file /etc/headcni/tailscale-oauth"),
            "{out}"
        );
    }
}
