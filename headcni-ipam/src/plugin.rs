//! The IPAM plugin verbs (ADD, DEL, CHECK, GC, STATUS) over an [`IpamStore`] (by default the
//! on-disk [`Store`]), used in-process by the main plugin and by the standalone `headcni-ipam`
//! binary. Behaviour follows host-local
//! (`plugins/ipam/host-local/main.go`) except where documented (idempotent ADD, GC, STATUS).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use headcni_core::cni::{
    CniArgs, CniError, CniResult, Dns, ErrorCode, IpConfig, MAX_NETWORK_NAME_BYTES, NetConf,
};
use headcni_core::ipam::{
    AllocationStrategy, Attachment, DEFAULT_DATA_DIR, IpamConf, IpamError, IpamStore, PoolUsage,
};

use crate::store::Store;

/// An IPAM instance for one request: the parsed `ipam` section and the store of its validated
/// range sets: by default the on-disk [`Store`] `<dataDir>/<name>`
/// ([`IpamPlugin::from_conf`]), or any [`IpamStore`] ([`IpamPlugin::with_store`]).
#[derive(Debug)]
pub struct IpamPlugin<S = Store> {
    store: S,
    conf: IpamConf,
}

fn config_error(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

/// Parses a requested address `"10.1.0.5"` or `"10.1.0.5/24"` (the prefix is ignored).
fn parse_requested(s: &str, source: &str) -> Result<IpAddr, CniError> {
    let addr = s.split('/').next().unwrap_or(s);
    addr.trim()
        .parse()
        .map_err(|_| config_error(format!("invalid requested IP {s:?} in {source}")))
}

/// The largest `resolvConf` file read (glibc reads at most a few KiB of it; anything this
/// large is not a resolver configuration).
pub const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;

/// Reads a resolv.conf: a regular file (checked with `fstat` on the fd opened with
/// `O_NONBLOCK`, so opening a FIFO never waits for a writer) of at most
/// [`MAX_RESOLV_CONF_BYTES`].
fn read_resolv_conf(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_RESOLV_CONF_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_RESOLV_CONF_BYTES} bytes"),
        ));
    }
    let mut text = String::new();
    file.take(MAX_RESOLV_CONF_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// Parses resolv.conf text like host-local's `parseResolvConf`: `nameserver X`, `domain X`,
/// `search X Y…`, `options A B…`; `#`/`;` comments and lines with a single field are skipped.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| (*s).to_owned());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_owned()),
            "domain" => dns.domain = Some(fields[1].to_owned()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

impl IpamPlugin<Store> {
    /// Builds from a parsed request: `conf.ipam` (raw JSON, host-local's shape), `conf.name`
    /// (the store directory name), `conf.runtime_config.ip_ranges` (prepended range sets).
    ///
    /// Errors: code 7 when `ipam` is missing or invalid (see [`IpamConf::range_sets`] and
    /// [`IpamPlugin::from_ipam`]); code 104 when the store directory cannot be created.
    pub fn from_conf<P>(conf: &NetConf<P>) -> Result<Self, CniError> {
        let raw = conf
            .ipam
            .as_ref()
            .ok_or_else(|| config_error("network configuration has no \"ipam\" section"))?;
        let ipam = IpamConf::parse(raw)?;
        Self::from_ipam(ipam, &conf.name, &conf.runtime_config.ip_ranges)
    }

    /// Builds from an already parsed [`IpamConf`], the network name and the runtime ranges.
    ///
    /// Errors: code 7 for invalid range sets, a `dataDir` that is empty or relative (it would
    /// resolve against the runtime's working directory), or a network name longer than
    /// [`MAX_NETWORK_NAME_BYTES`] (it cannot be the store's directory name); code 104 when
    /// the store directory cannot be created.
    pub fn from_ipam(
        ipam: IpamConf,
        network: &str,
        runtime_ip_ranges: &[Vec<headcni_core::ipam::RangeConf>],
    ) -> Result<Self, CniError> {
        let strategy = crate::strategy::strategy(ipam.strategy);
        Self::from_ipam_with_strategy(ipam, network, runtime_ip_ranges, strategy)
    }

    /// [`IpamPlugin::from_ipam`] with a custom [`AllocationStrategy`] instead of the one
    /// `ipam.strategy` names (see [`Store::open_with_strategy`]). Same errors.
    pub fn from_ipam_with_strategy(
        ipam: IpamConf,
        network: &str,
        runtime_ip_ranges: &[Vec<headcni_core::ipam::RangeConf>],
        strategy: impl AllocationStrategy + 'static,
    ) -> Result<Self, CniError> {
        if network.len() > MAX_NETWORK_NAME_BYTES {
            return Err(config_error("invalid network name").with_details(format!(
                "{} bytes is longer than {MAX_NETWORK_NAME_BYTES}, the limit of the store's \
                 directory name <dataDir>/<name>",
                network.len()
            )));
        }
        let data_dir: PathBuf = match &ipam.data_dir {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => {
                return Err(config_error("invalid ipam.dataDir").with_details(format!(
                    "{:?} is not an absolute path",
                    d.display()
                        .to_string()
                        .chars()
                        .take(256)
                        .collect::<String>()
                )));
            }
        };
        let sets = ipam.range_sets(runtime_ip_ranges)?;
        let store = Store::open_with_strategy(&data_dir, network, sets, strategy)?;
        Ok(IpamPlugin { store, conf: ipam })
    }

    /// Requested IPs: `runtimeConfig.ips`, else `args.cni.ips` of the configuration, else
    /// `CNI_ARGS` `IP=` (the first non-empty source wins; duplicates removed). Prefixes such
    /// as `/24` are accepted and ignored.
    ///
    /// Errors: code 7 for an unparsable address in the configuration (`CNI_ARGS` is already
    /// validated by [`CniArgs::parse`]).
    pub fn requested_ips<P>(conf: &NetConf<P>, args: &CniArgs) -> Result<Vec<IpAddr>, CniError> {
        let mut out: Vec<IpAddr> = Vec::new();
        if !conf.runtime_config.ips.is_empty() {
            for s in &conf.runtime_config.ips {
                out.push(parse_requested(s, "runtimeConfig.ips")?);
            }
        } else if let Some(list) = conf
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
            .filter(|v| !v.is_null())
        {
            let arr = list
                .as_array()
                .ok_or_else(|| config_error("args.cni.ips must be a list of strings"))?;
            for v in arr {
                let s = v
                    .as_str()
                    .ok_or_else(|| config_error("args.cni.ips must be a list of strings"))?;
                out.push(parse_requested(s, "args.cni.ips")?);
            }
            if out.is_empty() {
                out.extend(args.ips.iter().copied());
            }
        } else {
            out.extend(args.ips.iter().copied());
        }
        let mut uniq = Vec::with_capacity(out.len());
        for ip in out {
            if !uniq.contains(&ip) {
                uniq.push(ip);
            }
        }
        Ok(uniq)
    }
}

impl<S: IpamStore> IpamPlugin<S> {
    /// An IPAM instance over any [`IpamStore`]: the verbs reserve in `store` (whose
    /// [`IpamStore::range_sets`] are the ranges), and take only `routes` and `resolvConf` from
    /// `conf` (its ranges, `dataDir` and `strategy` are the store's business).
    pub fn with_store(store: S, conf: IpamConf) -> Self {
        IpamPlugin { store, conf }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The DNS of `resolvConf`: the file must be a regular file of at most
    /// [`MAX_RESOLV_CONF_BYTES`]; it is opened non-blocking, so a FIFO or a device there is
    /// refused at once instead of hanging the ADD (symlinks are followed, as
    /// `/etc/resolv.conf` often is one). Errors: code 7.
    fn dns(&self) -> Result<Dns, CniError> {
        let Some(path) = &self.conf.resolv_conf else {
            return Ok(Dns::default());
        };
        let text = read_resolv_conf(Path::new(path)).map_err(|e| {
            config_error(format!(
                "cannot read resolvConf {}",
                Path::new(path).display()
            ))
            .with_details(e.to_string())
        })?;
        Ok(parse_resolv_conf(&text))
    }

    /// ADD: reserves one address per range set (idempotent per attachment) and returns the
    /// abbreviated IPAM result: `ips` (no `interface`), `routes` from `ipam.routes`, `dns` from
    /// `resolvConf`.
    ///
    /// Errors: 100 pool exhausted, 101 requested address unavailable, 104 store, 7 unreadable
    /// `resolvConf` (checked before anything is reserved).
    pub fn add(&self, att: &Attachment, requested: &[IpAddr]) -> Result<CniResult, CniError> {
        self.add_fresh(att, requested).map(|(result, _)| result)
    }

    /// [`IpamPlugin::add`], also telling whether the attachment held no reservation before
    /// ([`IpamStore::allocate_fresh`]): the main plugin releases only fresh reservations when its
    /// ADD fails later. Same errors as `add`.
    pub fn add_fresh(
        &self,
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(CniResult, bool), CniError> {
        let dns = self.dns()?;
        let (res, fresh) = self.store.allocate_fresh(att, requested)?;
        let result = CniResult {
            interfaces: Vec::new(),
            ips: res
                .into_iter()
                .map(|r| IpConfig {
                    interface: None,
                    address: r.address,
                    gateway: r.gateway,
                })
                .collect(),
            routes: self.conf.routes.clone(),
            dns,
        };
        Ok((result, fresh))
    }

    /// DEL: releases the attachment's reservations. Idempotent: `Ok` when nothing is reserved.
    /// Errors: 104 when the store cannot be written.
    pub fn del(&self, att: &Attachment) -> Result<(), CniError> {
        self.store.release(att)?;
        Ok(())
    }

    /// CHECK: the attachment holds a reservation, and when `prev` is given, the addresses of
    /// `prev` that fall in this plugin's range sets are exactly the reserved ones.
    ///
    /// Errors: 106 on a missing reservation or a mismatch, 104 store.
    pub fn check(&self, att: &Attachment, prev: Option<&CniResult>) -> Result<(), CniError> {
        let held = self.store.find(att)?;
        if held.is_empty() {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "failed to find address added by container {}",
                    att.container_id
                ),
            ));
        }
        let Some(prev) = prev else { return Ok(()) };
        let mut want: Vec<IpAddr> = held.iter().map(|r| r.address.ip()).collect();
        let mut got: Vec<IpAddr> = prev
            .ips
            .iter()
            .map(|c| c.address.ip())
            .filter(|ip| self.store.range_sets().iter().any(|s| s.contains(*ip)))
            .collect();
        want.sort();
        got.sort();
        got.dedup();
        if want != got {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                "IPAM reservations do not match prevResult",
            )
            .with_details(format!("reserved {want:?}, prevResult has {got:?}")));
        }
        Ok(())
    }

    /// GC: releases every reservation whose attachment is not in `valid`; returns each
    /// released address with the attachment that held it (see [`IpamStore::gc`]).
    /// Errors: 104.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<(IpAddr, Option<Attachment>)>, CniError> {
        Ok(self.store.gc(valid)?)
    }

    /// STATUS: `Ok` when every range set has a free address; otherwise code 50 (NotAvailable)
    /// naming the exhausted set. Errors: 104 when the store cannot be read.
    pub fn status(&self) -> Result<(), CniError> {
        for u in self.usage()? {
            if u.allocated >= u.size {
                let desc = self
                    .store
                    .range_sets()
                    .get(u.range_set)
                    .map(|s| s.describe())
                    .unwrap_or_default();
                return Err(CniError::new(
                    ErrorCode::NotAvailable,
                    format!("no free address in range set {} ({desc})", u.range_set),
                )
                .with_details(format!("{} of {} addresses allocated", u.allocated, u.size)));
            }
        }
        Ok(())
    }

    /// Per range set size and allocation count. Errors: 104.
    pub fn usage(&self) -> Result<Vec<PoolUsage>, CniError> {
        self.store.usage().map_err(|e: IpamError| e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headcni_core::cni::NetConf;
    use serde_json::json;

    fn conf(dir: &Path, extra: serde_json::Value) -> NetConf<serde_json::Value> {
        let mut v = json!({
            "cniVersion": "1.0.0", "name": "net1", "type": "headcni",
            "ipam": {"type": "headcni-ipam", "dataDir": dir, "strategy": "dense-pack",
                     "ranges": [[{"subnet": "10.5.0.0/30"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }
    fn att(c: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn relative_or_empty_data_dir_and_overlong_names_are_config_errors() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "rel/dir", "./x"] {
            let mut c = conf(d.path(), json!({}));
            c.ipam.as_mut().unwrap()["dataDir"] = json!(bad);
            let e = IpamPlugin::from_conf(&c).unwrap_err();
            assert_eq!(e.code, 7, "{bad:?}: {e:?}");
        }
        let mut c = conf(d.path(), json!({}));
        c.name = "n".repeat(MAX_NETWORK_NAME_BYTES + 1);
        assert_eq!(IpamPlugin::from_conf(&c).unwrap_err().code, 7);
        c.name = "n".repeat(MAX_NETWORK_NAME_BYTES);
        IpamPlugin::from_conf(&c).unwrap();
    }

    #[test]
    fn requested_precedence() {
        let d = tempfile::tempdir().unwrap();
        let a = CniArgs::parse("IP=10.5.0.2").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = conf(d.path(), json!({}));
        assert_eq!(
            IpamPlugin::requested_ips(&c, &a).unwrap(),
            vec![ip("10.5.0.2")]
        );
        let c = conf(d.path(), json!({"args": {"cni": {"ips": ["10.5.0.3/30"]}}}));
        assert_eq!(
            IpamPlugin::requested_ips(&c, &a).unwrap(),
            vec![ip("10.5.0.3")]
        );
        let c = conf(
            d.path(),
            json!({"args": {"cni": {"ips": ["10.5.0.3"]}}, "runtimeConfig": {"ips": ["10.5.0.1", "10.5.0.1"]}}),
        );
        assert_eq!(
            IpamPlugin::requested_ips(&c, &a).unwrap(),
            vec![ip("10.5.0.1")]
        );
        let c = conf(d.path(), json!({"args": {"cni": {"ips": ["nope"]}}}));
        assert_eq!(IpamPlugin::requested_ips(&c, &a).unwrap_err().code, 7);
    }

    /// Issue 8: `resolvConf` naming a FIFO hung ADD (before anything was reserved, but for
    /// ever) and `/dev/zero` grew the plugin without bound; both are code 7 at once now, and
    /// nothing is reserved.
    #[test]
    fn resolv_conf_fifo_device_and_oversize_are_refused_fast() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let big = d.path().join("big.conf");
        std::fs::write(&big, "nameserver 10.0.0.1\n".repeat(10_000)).unwrap();
        for path in [fifo, big, "/dev/zero".into()] {
            let mut c = conf(d.path(), json!({}));
            if let Some(i) = c.ipam.as_mut() {
                i["resolvConf"] = json!(path);
            }
            let p = IpamPlugin::from_conf(&c).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(p.add(&att("a"), &[]).map(|_| ()).map_err(|e| e.code));
            });
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("ADD with resolvConf {path:?} hung"));
            assert_eq!(got, Err(7), "{path:?}");
        }
        let p = IpamPlugin::from_conf(&conf(d.path(), json!({}))).unwrap();
        assert_eq!(
            p.add(&att("b"), &[]).unwrap().ips[0].address.to_string(),
            "10.5.0.2/30"
        );
    }

    #[test]
    fn verbs_and_codes() {
        let d = tempfile::tempdir().unwrap();
        let resolv = d.path().join("resolv.conf");
        std::fs::write(&resolv, "# c\nnameserver 10.0.0.10\nnameserver 10.0.0.11\ndomain x.local\nsearch a b\noptions ndots:5\nbogus\n").unwrap();
        let mut c = conf(d.path(), json!({}));
        if let Some(i) = c.ipam.as_mut() {
            i["resolvConf"] = json!(resolv);
        }
        let p = IpamPlugin::from_conf(&c).unwrap();
        p.status().unwrap();
        let r = p.add(&att("a"), &[]).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.ips[0].address.to_string(), "10.5.0.2/30");
        assert_eq!(r.ips[0].gateway, Some("10.5.0.1".parse().unwrap()));
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.dns.nameservers, ["10.0.0.10", "10.0.0.11"]);
        assert_eq!(r.dns.domain.as_deref(), Some("x.local"));
        assert_eq!(
            (r.dns.search.clone(), r.dns.options.clone()),
            (
                vec!["a".to_string(), "b".into()],
                vec!["ndots:5".to_string()]
            )
        );
        assert!(r.interfaces.is_empty());
        p.check(&att("a"), Some(&r)).unwrap();
        p.check(&att("a"), None).unwrap();
        let mut wrong = r.clone();
        wrong.ips[0].address = "10.5.0.1/30".parse().unwrap();
        assert_eq!(p.check(&att("a"), Some(&wrong)).unwrap_err().code, 106);
        // The /30 has one address: exhausted now.
        let e = p.status().unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.msg.contains("range set 0"), "{e}");
        assert_eq!(p.add(&att("b"), &[]).unwrap_err().code, 100);
        assert_eq!(
            p.add(&att("b"), &["10.5.0.1".parse().unwrap()])
                .unwrap_err()
                .code,
            101
        );
        assert_eq!(p.usage().unwrap()[0].allocated, 1);
        p.del(&att("a")).unwrap();
        p.del(&att("a")).unwrap();
        assert_eq!(p.check(&att("a"), None).unwrap_err().code, 106);
        p.add(&att("b"), &[]).unwrap();
        assert_eq!(
            p.gc(&[]).unwrap(),
            vec![("10.5.0.2".parse::<IpAddr>().unwrap(), Some(att("b")))]
        );
    }

    #[test]
    fn config_errors() {
        let d = tempfile::tempdir().unwrap();
        let mut c = conf(d.path(), json!({}));
        c.ipam = None;
        assert_eq!(IpamPlugin::from_conf(&c).unwrap_err().code, 7);
        let mut c = conf(d.path(), json!({}));
        c.ipam = Some(json!({"type": "headcni-ipam", "ranges": [[{"subnet": "10.0.0.0/31"}]]}));
        assert_eq!(IpamPlugin::from_conf(&c).unwrap_err().code, 7);
        let mut c = conf(d.path(), json!({}));
        if let Some(i) = c.ipam.as_mut() {
            i["resolvConf"] = json!(d.path().join("missing"));
        }
        let p = IpamPlugin::from_conf(&c).unwrap();
        assert_eq!(p.add(&att("a"), &[]).unwrap_err().code, 7);
        assert!(
            p.store().find(&att("a")).unwrap().is_empty(),
            "nothing reserved"
        );
        // A file where the store directory should be: store error 104.
        std::fs::write(d.path().join("blocker"), "").unwrap();
        let mut c = conf(d.path(), json!({}));
        if let Some(i) = c.ipam.as_mut() {
            i["dataDir"] = json!(d.path().join("blocker"));
        }
        assert_eq!(IpamPlugin::from_conf(&c).unwrap_err().code, 104);
    }

    #[test]
    fn runtime_ranges_are_prepended() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(
            d.path(),
            json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.6.0.0/29"}]]}}),
        );
        let p = IpamPlugin::from_conf(&c).unwrap();
        let r = p.add(&att("a"), &[]).unwrap();
        let got: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(got, ["10.6.0.2/29", "10.5.0.2/30"]);
    }
}
