//! The daemon's configuration: a TOML file, environment and flag overrides, validation.
//!
//! # Layers
//!
//! Each key is resolved from, lowest to highest precedence:
//!
//! 1. the built-in default (some depend on `tailscale.mode`, see below);
//! 2. the TOML file (`--config PATH`, env `HEADCNI_CONFIG`, default
//!    [`DEFAULT_CONFIG_PATH`]). A missing file at the default path means "all defaults"; a
//!    missing file given explicitly is an error;
//! 3. the environment: `HEADCNI_<SECTION>_<KEY>` (e.g. `HEADCNI_NODE_POD_CIDR`,
//!    `HEADCNI_CNI_MTU`, `HEADCNI_TAILSCALE_MODE`). Empty values count as unset. Lists are
//!    comma-separated; `HEADCNI_CNI_CHAINED` is a JSON array;
//! 4. the command-line flags of [`DaemonFlags`].
//!
//! `node.name` has one more, lowest-precedence source: when neither the file, the env nor a
//! flag sets it, `NODE_NAME` (the Downward API's `spec.nodeName` in the DaemonSet) and then
//! the host name (lower-cased, as the kubelet does) are used — the public contract's
//! "default: NODE_NAME env, then the hostname".
//!
//! [`load`] is a pure function of the flags, the environment and the file, so the daemon
//! calls it again with the same [`DaemonFlags`] on SIGHUP and keeps every override (the Go
//! original dropped them on reload).
//!
//! Unknown keys inside a known section are accepted (a newer file on an older binary keeps
//! working) and logged once per key and process. An unknown section (`[daemonx]`) is an error:
//! a misspelled section header would silently drop every key under it.
//!
//! # Errors and warnings
//!
//! [`check_from`] reports everything in one pass: every value that does not parse, every
//! unknown section and every validation problem ([`Config::validate_with`]) are errors;
//! [`Config::warnings`] are legal but suspicious settings (a PodCIDR inside the tailnet's
//! `100.64.0.0/10`, `cluster_cidr = 0.0.0.0/0`, a non-loopback `daemon.listen`, ...).
//! `headcni config check` prints both; the daemon refuses to start on errors and logs the
//! warnings at start and on reload. Messages never quote a secret: URLs pass through
//! [`headcni_headscale::secret::redact_url`].
//!
//! # Keys
//!
//! ```toml
//! [node]
//! name = "node-1"                  # default: NODE_NAME env, then the hostname
//! pod_cidr = "10.244.1.0/24"       # optional: skips discovery; a list for dual-stack
//! cluster_cidr = "10.244.0.0/16"   # excluded from masquerade; a list for dual-stack
//! pod_cidr_from_name_hash = false  # opt-in last resort: hash the name inside cluster_cidr
//! node_cidr_prefix = 24            # for the hash: IPv4 prefix, or { v4 = 24, v6 = 64 }
//! kubeconfig = "/etc/headcni/kubeconfig"  # default: in-cluster, KUBECONFIG, ~/.kube/config
//! local_files_root = "/"           # where the kubelet/k3s files are looked up (tests)
//! firewall_driver = "nft"          # nft | none (masquerade managed by someone else)
//! masquerade_ipv6 = true           # false: IPv6 pods reach the internet with their own IPs
//! service_cidr = "10.96.0.0/12"    # excluded from masquerade; a list for dual-stack
//! no_masquerade_cidrs = []         # further destinations that see pod source addresses
//! bridge_netfilter = true          # br_netfilter + bridge-nf-call-ip(6)tables=1 (kube-proxy)
//!
//! [cni]
//! conf_dir = "/etc/cni/net.d"
//! bin_dir = "/opt/cni/bin"
//! data_dir = "/var/lib/cni/networks"
//! bridge = "headcni0"
//! mtu = 1280                       # default: the tailnet interface's MTU
//! ipam_strategy = "sequential"     # sequential | random | dense-pack
//! conflist_name = "10-headcni.conflist"
//! network_name = "headcni"         # the conflist's name; the IPAM store is data_dir/<name>
//! daemon_socket = "/run/headcni/daemon.sock"   # plugin → daemon events; "" disables
//! chained = [{ type = "portmap", capabilities = { portMappings = true } }]
//!
//! [tailscale]
//! mode = "host"                    # host | daemon
//! socket = "/var/run/tailscale/tailscaled.sock"  # daemon mode: /run/headcni/tailscaled.sock
//! interface = "tailscale0"         # daemon mode default: headcni01
//! tailscaled_path = "tailscaled"   # daemon mode: the binary to supervise
//! state_dir = "/var/lib/headcni/tailscaled"      # daemon mode: <daemon.state_dir>/tailscaled
//! port = 41645                     # daemon mode: tailscaled's UDP port
//!
//! [headscale]
//! url = "https://headscale.example.com"
//! api_key_file = "/etc/headcni/api-key"   # or env HEADSCALE_API_KEY
//! approval = "api"                 # api | auto-approvers | tailscale-api
//! user = "headcni"                 # daemon mode: the owner of pre-auth keys
//! timeout_secs = 10                # per Headscale/LocalAPI request
//! resync_secs = 300                # slow resync with Headscale (jittered +0–20 %); ≥ 30
//!
//! [daemon]
//! listen = "127.0.0.1:8081"        # /metrics, /healthz, /readyz, /status
//! expose_to_network = false        # true: a non-loopback listen is intended (no warning)
//! state_dir = "/var/lib/headcni"
//! reconcile_interval_secs = 30
//! log_level = "info"               # or a tracing filter, e.g. "info,headcni_headscale=debug"
//! log_format = "text"              # text | json
//!
//! [tailscale_api]                  # only with [headscale] approval = "tailscale-api"
//! url = "https://api.tailscale.com"  # or a Headscale serving /api/v2
//! tailnet = "-"                    # "-": the OAuth client's own tailnet
//! oauth_file = "/etc/headcni/tailscale-oauth"  # client_id=… / client_secret=…, mode 0600
//!
//! [magic_dns]                      # DNS in the conflist/ADD result (podman); see magic_dns.rs
//! enable = false
//! base_domain = "tailnet.example.com"  # also `headcni dns coredns`'s zone
//! nameservers = ["100.100.100.100"]    # default with enable
//! search_domains = ["tailnet.example.com"]  # default with enable: [base_domain]
//! ```
//!
//! # Files
//!
//! One concern per file, everything public re-exported here: `schema.rs` (the structs, their
//! defaults and the mode-dependent resolution), `env.rs` (the key registry and the
//! `HEADCNI_<SECTION>_<KEY>` conversion), `load.rs` (the layered loader and [`DaemonFlags`]),
//! `validate.rs` (errors and warnings), `show.rs` (redaction and `headcni config show`'s
//! text), `error.rs` ([`ConfigError`], [`Problem`], [`Origin`]).

mod env;
mod error;
mod load;
mod magic_dns;
mod schema;
mod show;
mod validate;

pub use env::{env_var_name, known_keys};
pub use error::{ConfigError, Origin, Problem};
pub use load::{Checked, DaemonFlags, Loaded, check_from, load, load_from};
pub use magic_dns::{MAGIC_DNS_IP, MAX_NAMESERVERS, MAX_SEARCH_DOMAINS, MagicDnsConfig, is_domain};
pub use schema::*;
pub use show::render_show;
pub use validate::{api_key_problem, cidr_warnings, oauth_file_problem};
