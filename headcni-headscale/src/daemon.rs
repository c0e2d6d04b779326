//! Daemon mode's pure pieces (control-plane-apis.md §5 (b)): the bootstrap pre-auth key and
//! the LocalAPI `start` + login of a dedicated tailscaled. Process supervision lives in the
//! daemon (headcni-cli); after login, approval is the same as host mode
//! ([`crate::backend::TailnetBackend`]).

use std::path::Path;
use std::time::Duration;

use headcni_core::control::ControlPlaneError;
use ipnetwork::IpNetwork;
use tokio::time::Instant;

use crate::headscale::{HeadscaleClient, HeadscaleError, PreAuthKey, PreAuthKeyOptions};
use crate::localapi::{LocalApiClient, NetfilterMode, OptBool, Prefs, StartOptions, Status};
use crate::retry::{Backoff, control_error};
use crate::secret::Secret;

/// Default Headscale user owning HeadCNI's daemon-mode nodes.
pub const DEFAULT_USER: &str = "headcni";

/// Lifetime of the bootstrap pre-auth key: long enough to start tailscaled and log in.
pub const BOOTSTRAP_KEY_TTL: Duration = Duration::from_secs(600);

/// What the dedicated tailscaled should look like. Every field becomes an explicit pref.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonPrefs {
    /// Headscale URL (`ControlURL`, `--login-server`).
    pub control_url: String,
    /// Tailnet host name (the Kubernetes node name).
    pub hostname: String,
    /// This node's pod CIDR(s) (`AdvertiseRoutes`).
    pub routes: Vec<IpNetwork>,
    /// `AdvertiseTags` (e.g. `tag:headcni`); empty for user-owned nodes.
    pub advertise_tags: Vec<String>,
    /// `NetfilterMode`; default [`NetfilterMode::On`] (tailscaled's Linux default).
    pub netfilter_mode: NetfilterMode,
}

/// The complete prefs for `start`: `UpdatePrefs` replaces **all** stored prefs except the
/// persisted identity (tailscale ipn/backend.go `Options`), so nothing is left to zero values.
/// `RouteAll`, `NoSNAT`, `NoStatefulFiltering` true (pod source addresses survive, new
/// cross-node connections are not dropped); `CorpDNS` false (the node's DNS is left alone).
pub fn start_prefs(p: &DaemonPrefs) -> Prefs {
    Prefs {
        control_url: p.control_url.clone(),
        route_all: true,
        corp_dns: false,
        want_running: true,
        shields_up: false,
        advertise_tags: p.advertise_tags.clone(),
        hostname: p.hostname.clone(),
        advertise_routes: p.routes.clone(),
        no_snat: true,
        no_stateful_filtering: OptBool::True,
        netfilter_mode: p.netfilter_mode,
        other: Default::default(),
    }
}

/// The `ipn.Options` for tailscale ipn/localapi `POST /localapi/v0/start`.
pub fn start_options(p: &DaemonPrefs, auth_key: Option<Secret>) -> StartOptions {
    StartOptions {
        auth_key,
        update_prefs: start_prefs(p),
    }
}

/// Creates the short-lived, single-use, non-ephemeral pre-auth key used when the dedicated
/// tailscaled has no state yet: ensures the user `user` exists (Headscale `GET/POST
/// /api/v1/user`), then Headscale `POST /api/v1/preauthkey` with `expiration = now + ttl`
/// (user by id on ≥ 0.26, by name on ≤ 0.25).
pub async fn bootstrap_key(
    client: &HeadscaleClient,
    user: &str,
    ttl: Duration,
    acl_tags: Vec<String>,
) -> Result<PreAuthKey, HeadscaleError> {
    let u = client.ensure_user(user).await?;
    client
        .create_preauth_key(
            &u,
            &PreAuthKeyOptions {
                reusable: false,
                ephemeral: false,
                ttl,
                acl_tags,
            },
        )
        .await
}

/// Whether a tailscaled answers on `socket` (daemon mode refuses to start beside a host
/// tailscaled: two instances fight over route table 52, ip rules 52xx and the `ts-*` chains).
pub async fn tailscaled_answers(socket: &Path) -> bool {
    LocalApiClient::new(socket)
        .with_timeout(Duration::from_secs(2))
        .status_without_peers()
        .await
        .is_ok()
}

/// What the dedicated tailscaled needs next, decided from its LocalAPI status alone (never
/// from files: real tailscaled writes `{}` to its state file at start-up, before any login,
/// tailscale `cmd/tailscaled/tailscaled.go` → `ipn/store/stores.go` `New`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// `Running`: logged in; nothing to do.
    Running,
    /// `Starting`: it is connecting to control with its node key; wait.
    Wait,
    /// Call LocalAPI `start` with every pref explicit; `mint_key`: with a fresh bootstrap
    /// pre-auth key (it has no usable node key: `NeedsLogin`, or `NoState` without
    /// `HaveNodeKey`, e.g. a first start, a node deleted or expired in Headscale, a login
    /// that failed earlier).
    Start {
        /// Whether a pre-auth key must be created and sent.
        mint_key: bool,
    },
    /// A state HeadCNI cannot fix by logging in (`NeedsMachineAuth`: an admin must approve
    /// the machine; `InUseOtherUser`; an unknown state); the reason says which.
    Blocked {
        /// For `/readyz` and `headcni status`.
        reason: String,
    },
}

/// Decides [`LoginStep`] from `GET /localapi/v0/status` (`BackendState`, `HaveNodeKey`;
/// states from tailscale `ipn/backend.go`). `NeedsLogin` always gets a fresh key: with a
/// node key it means control no longer accepts it (node deleted or key expired).
pub fn login_step(st: &Status) -> LoginStep {
    match st.backend_state.as_str() {
        "Running" => LoginStep::Running,
        "Starting" => LoginStep::Wait,
        "NeedsLogin" => LoginStep::Start { mint_key: true },
        "NoState" | "" => LoginStep::Start {
            mint_key: !st.have_node_key,
        },
        "Stopped" => LoginStep::Start { mint_key: false },
        "NeedsMachineAuth" => LoginStep::Blocked {
            reason: "tailscaled is NeedsMachineAuth: the machine must be authorized in the control server".into(),
        },
        other => LoginStep::Blocked {
            reason: format!("tailscaled BackendState is {other:?}"),
        },
    }
}

/// One login attempt of the dedicated tailscaled, for the reconcile loop (which calls it on
/// every pass until tailscaled is `Running`, so a failed bootstrap is retried with the loop's
/// backoff, forever): reads the status, and per [`login_step`] starts it with every pref
/// explicit, creating a bootstrap pre-auth key for `user` with `acl_tags` when one is needed,
/// then `login-interactive` when it still has no node key, and waits at most `wait` for
/// `Running`. Returns the step it took.
///
/// Errors: [`ControlPlaneError::Refused`] when a key is needed and no API client is given, or
/// Headscale/tailscaled refuse; [`ControlPlaneError::Unreachable`] after retries;
/// [`ControlPlaneError::NotReady`] when blocked or not `Running` within `wait`.
pub async fn ensure_logged_in(
    localapi: &LocalApiClient,
    headscale: Option<&HeadscaleClient>,
    prefs: &DaemonPrefs,
    user: &str,
    acl_tags: &[String],
    wait: Duration,
    backoff: &Backoff,
) -> Result<LoginStep, ControlPlaneError> {
    let la = |e: crate::localapi::LocalApiError| control_error("tailscaled LocalAPI", &e);
    let st = backoff
        .retry("localapi status", || localapi.status_without_peers())
        .await
        .map_err(la)?;
    let mint_key = match login_step(&st) {
        step @ (LoginStep::Running | LoginStep::Wait) => return Ok(step),
        LoginStep::Blocked { reason } => return Err(ControlPlaneError::NotReady { reason }),
        LoginStep::Start { mint_key } => mint_key,
    };
    let key = if mint_key {
        refuse_tags_with_key(prefs)?;
        let client = headscale.ok_or_else(|| ControlPlaneError::Refused {
            endpoint: "headscale API".into(),
            reason: format!(
                "tailscaled is {} and no API key is configured to create a pre-auth key",
                st.backend_state
            ),
        })?;
        let k = backoff
            .retry("headscale bootstrap key", || {
                bootstrap_key(client, user, BOOTSTRAP_KEY_TTL, acl_tags.to_vec())
            })
            .await
            .map_err(|e| control_error("headscale API", &e))?;
        Some(k.key)
    } else {
        None
    };
    let opts = start_options(prefs, key);
    backoff
        .retry("localapi start", || localapi.start(&opts))
        .await
        .map_err(la)?;
    let st = backoff
        .retry("localapi status", || localapi.status_without_peers())
        .await
        .map_err(la)?;
    if !st.have_node_key {
        backoff
            .retry("localapi login-interactive", || {
                localapi.login_interactive()
            })
            .await
            .map_err(la)?;
    }
    let deadline = Instant::now() + wait;
    loop {
        let st = backoff
            .retry("localapi status", || localapi.status_without_peers())
            .await
            .map_err(la)?;
        if st.is_running() {
            return Ok(LoginStep::Start { mint_key });
        }
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::NotReady {
                reason: format!(
                    "tailscaled is {} after login (waited {wait:?}; health: {})",
                    st.backend_state,
                    st.health.join("; ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node may not request tags (`AdvertiseTags`) when it registers with a pre-auth key:
/// Headscale 0.28, 0.29 and main refuse the registration ("requested tags … are invalid or not
/// permitted", headscale `hscontrol/state/state.go` `HandleNodeFromPreAuthKey`, from 0.28 on), so HeadCNI refuses the combination before it
/// creates a key. Tags come from the key instead (`acl_tags` of [`bootstrap_key`]).
///
/// Errors: [`ControlPlaneError::Refused`] when `prefs.advertise_tags` is not empty.
pub fn refuse_tags_with_key(prefs: &DaemonPrefs) -> Result<(), ControlPlaneError> {
    if prefs.advertise_tags.is_empty() {
        return Ok(());
    }
    Err(ControlPlaneError::Refused {
        endpoint: "headscale API".into(),
        reason: format!(
            "the node would request tags {:?} while registering with a pre-auth key, which Headscale ≥ 0.28 refuses; put the tags on the key ([headscale] acl_tags) instead",
            prefs.advertise_tags
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, have_node_key: bool) -> Status {
        Status {
            backend_state: state.into(),
            have_node_key,
            ..Default::default()
        }
    }

    #[test]
    fn login_step_comes_from_the_backend_state_not_from_files() {
        assert_eq!(login_step(&status("Running", true)), LoginStep::Running);
        assert_eq!(login_step(&status("Starting", true)), LoginStep::Wait);
        // a first start (state file `{}` already written), or a failed first bootstrap
        assert_eq!(
            login_step(&status("NoState", false)),
            LoginStep::Start { mint_key: true }
        );
        assert_eq!(
            login_step(&status("NeedsLogin", false)),
            LoginStep::Start { mint_key: true }
        );
        // node deleted or expired in Headscale: it has a key control no longer accepts
        assert_eq!(
            login_step(&status("NeedsLogin", true)),
            LoginStep::Start { mint_key: true }
        );
        // a restart with a good identity: start without a key
        assert_eq!(
            login_step(&status("NoState", true)),
            LoginStep::Start { mint_key: false }
        );
        assert_eq!(
            login_step(&status("Stopped", true)),
            LoginStep::Start { mint_key: false }
        );
        assert!(matches!(
            login_step(&status("NeedsMachineAuth", true)),
            LoginStep::Blocked { .. }
        ));
        assert!(matches!(
            login_step(&status("InUseOtherUser", true)),
            LoginStep::Blocked { .. }
        ));
    }

    #[test]
    fn requesting_tags_with_a_pre_auth_key_is_refused_before_a_key_is_made() {
        let mut p = DaemonPrefs {
            control_url: "https://hs.example".into(),
            hostname: "node-1".into(),
            routes: vec![],
            advertise_tags: vec![],
            netfilter_mode: NetfilterMode::On,
        };
        assert!(refuse_tags_with_key(&p).is_ok());
        p.advertise_tags = vec!["tag:headcni".into()];
        let e = refuse_tags_with_key(&p).unwrap_err();
        assert!(matches!(e, ControlPlaneError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("acl_tags"), "{e}");
    }

    #[test]
    fn start_request_sets_every_pref() {
        let p = DaemonPrefs {
            control_url: "https://hs.example".into(),
            hostname: "node-1".into(),
            routes: vec!["10.244.1.0/24".parse().unwrap()],
            advertise_tags: vec![],
            netfilter_mode: NetfilterMode::On,
        };
        let o = start_options(&p, Some(Secret::new("k")));
        let j = serde_json::to_value(&o).unwrap();
        let up = &j["UpdatePrefs"];
        for k in [
            "ControlURL",
            "RouteAll",
            "CorpDNS",
            "WantRunning",
            "ShieldsUp",
            "AdvertiseTags",
            "Hostname",
            "AdvertiseRoutes",
            "NoSNAT",
            "NoStatefulFiltering",
            "NetfilterMode",
        ] {
            assert!(up.get(k).is_some(), "missing {k}");
        }
        assert_eq!(up["NetfilterMode"], 2);
        assert_eq!(up["NoStatefulFiltering"], true);
        assert_eq!(up["CorpDNS"], false);
        assert_eq!(j["AuthKey"], "k");
    }
}
