//! HeadCNI's accept rules in the host's iptables `filter` table `FORWARD` chain: the rule
//! set, as data. No I/O (the adapter is `headcni_netlink::iptables`).
//!
//! Why: HeadCNI's own nftables table only masquerades. On a host whose `filter FORWARD`
//! policy is `DROP` (every host running Docker, many hardened ones) forwarded pod traffic is
//! dropped there, and an `accept` in another table cannot override a `drop` in this one (each
//! netfilter base chain decides on its own; a packet must be accepted by all of them). So,
//! as flannel (`FLANNEL-FWD`, flannel `pkg/trafficmngr/iptables/iptables.go`) and Docker
//! (`DOCKER-FORWARD`) do, HeadCNI owns one chain, [`CHAIN`], that accepts traffic from and to
//! the pod CIDRs, jumped to from the top of `FORWARD` by one rule tagged with [`COMMENT`].
//!
//! The rules are written in the exact form `iptables -S` prints them back, so "is it in
//! place" is a comparison of lines ([`ForwardRules::in_place`]) and nothing is rewritten when
//! nothing changed.

use ipnetwork::IpNetwork;

/// The chain HeadCNI owns in the `filter` table (IPv4 and IPv6).
pub const CHAIN: &str = "HEADCNI-FWD";

/// The comment on every HeadCNI rule (`-m comment --comment`), without spaces so that
/// `iptables -S` prints it unquoted.
pub const COMMENT: &str = "headcni-pods";

/// An iptables address family: which of `iptables` / `ip6tables` holds a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl IpFamily {
    /// The family of `net`.
    pub fn of(net: &IpNetwork) -> IpFamily {
        if net.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// The rules HeadCNI wants in one family's `filter` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRules {
    /// The family.
    pub family: IpFamily,
    /// The CIDRs whose forwarded traffic is accepted (as source and as destination), in
    /// order, without duplicates.
    pub cidrs: Vec<IpNetwork>,
}

impl ForwardRules {
    /// The rules for `cidrs` of `family` (CIDRs of the other family are ignored; duplicates
    /// dropped, order kept). The CIDRs are taken by their network address, as iptables
    /// prints them (`10.244.1.7/24` → `10.244.1.0/24`).
    pub fn new(family: IpFamily, cidrs: &[IpNetwork]) -> ForwardRules {
        let mut out: Vec<IpNetwork> = Vec::new();
        for c in cidrs.iter().filter(|c| IpFamily::of(c) == family) {
            let Ok(n) = IpNetwork::new(c.network(), c.prefix()) else {
                continue;
            };
            if !out.contains(&n) {
                out.push(n);
            }
        }
        ForwardRules { family, cidrs: out }
    }

    /// Whether there is nothing to accept (no CIDR of this family): the chain should then be
    /// absent.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// The jump from `FORWARD`, as `iptables -S FORWARD` prints it:
    /// `-A FORWARD -m comment --comment headcni-pods -j HEADCNI-FWD`.
    pub fn jump_line() -> String {
        format!("-A FORWARD -m comment --comment {COMMENT} -j {CHAIN}")
    }

    /// The chain's rules as `iptables -S HEADCNI-FWD` prints them (after its `-N` line):
    /// for each CIDR `-A HEADCNI-FWD -s <cidr> ... -j ACCEPT` then `-d <cidr>`.
    pub fn chain_lines(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.cidrs.len() * 2);
        for c in &self.cidrs {
            for dir in ["-s", "-d"] {
                v.push(format!(
                    "-A {CHAIN} {dir} {c} -m comment --comment {COMMENT} -j ACCEPT"
                ));
            }
        }
        v
    }

    /// Whether the observed `iptables -S FORWARD` and `iptables -S HEADCNI-FWD` output
    /// (`None` when the chain does not exist) already holds exactly these rules and the jump.
    /// Lines starting with `#` (iptables-nft's warnings) and the `-N`/`-P` lines are ignored.
    pub fn in_place(&self, forward: &str, chain: Option<&str>) -> bool {
        let Some(chain) = chain else {
            return false;
        };
        let jump = Self::jump_line();
        rule_lines(forward).any(|l| l == jump) && rule_lines(chain).eq(self.chain_lines())
    }

    /// The `iptables-restore --noflush` input that makes the chain hold exactly these rules
    /// (declaring the chain flushes it, in the same transaction) and, when `add_jump`, inserts
    /// the jump at the top of `FORWARD`. One transaction: packets never see a half-built
    /// chain. Source: iptables-restore(8) (`--noflush`, chain declarations).
    pub fn restore_input(&self, add_jump: bool) -> String {
        let mut s = String::from("*filter\n");
        s.push_str(&format!(":{CHAIN} - [0:0]\n"));
        for l in self.chain_lines() {
            s.push_str(&l);
            s.push('\n');
        }
        if add_jump {
            s.push_str(&format!(
                "-I FORWARD 1 -m comment --comment {COMMENT} -j {CHAIN}\n"
            ));
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// The `-A` lines of `iptables -S` output, trimmed.
fn rule_lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| l.starts_with("-A "))
}

/// Whether `iptables -S FORWARD` output holds HeadCNI's jump.
pub fn has_jump(forward: &str) -> bool {
    let jump = ForwardRules::jump_line();
    rule_lines(forward).any(|l| l == jump)
}

/// The policy of `FORWARD` in `iptables -S FORWARD` output (`-P FORWARD DROP` → `"DROP"`).
pub fn forward_policy(forward: &str) -> Option<&str> {
    forward
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("-P FORWARD "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn rules_per_family_deduplicated_and_masked() {
        let r = ForwardRules::new(
            IpFamily::V4,
            &[
                n("10.244.1.7/24"),
                n("fd00:10:244:1::/64"),
                n("10.244.1.0/24"),
                n("10.96.0.0/12"),
            ],
        );
        assert_eq!(r.cidrs, vec![n("10.244.1.0/24"), n("10.96.0.0/12")]);
        assert_eq!(
            r.chain_lines(),
            vec![
                "-A HEADCNI-FWD -s 10.244.1.0/24 -m comment --comment headcni-pods -j ACCEPT",
                "-A HEADCNI-FWD -d 10.244.1.0/24 -m comment --comment headcni-pods -j ACCEPT",
                "-A HEADCNI-FWD -s 10.96.0.0/12 -m comment --comment headcni-pods -j ACCEPT",
                "-A HEADCNI-FWD -d 10.96.0.0/12 -m comment --comment headcni-pods -j ACCEPT",
            ]
        );
        let v6 = ForwardRules::new(IpFamily::V6, &[n("10.244.1.0/24")]);
        assert!(v6.is_empty());
    }

    #[test]
    fn in_place_needs_the_jump_and_exactly_the_rules() {
        let r = ForwardRules::new(IpFamily::V4, &[n("10.244.1.0/24")]);
        let chain = format!("-N HEADCNI-FWD\n{}\n", r.chain_lines().join("\n"));
        let fwd_with = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -m comment --comment headcni-pods -j HEADCNI-FWD\n";
        let fwd_without = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n";
        assert!(r.in_place(fwd_with, Some(&chain)));
        assert!(!r.in_place(fwd_without, Some(&chain)));
        assert!(!r.in_place(fwd_with, None));
        // a stale CIDR, or a missing rule, is not in place
        let other = ForwardRules::new(IpFamily::V4, &[n("10.244.2.0/24")]);
        assert!(!other.in_place(fwd_with, Some(&chain)));
        let half = format!("-N HEADCNI-FWD\n{}\n", r.chain_lines()[0]);
        assert!(!r.in_place(fwd_with, Some(&half)));
        // iptables-nft's warning lines are ignored
        let warned = format!("# Warning: iptables-legacy tables present\n{fwd_with}");
        assert!(r.in_place(&warned, Some(&chain)));
        assert!(has_jump(fwd_with) && !has_jump(fwd_without));
        assert_eq!(forward_policy(fwd_with), Some("DROP"));
        assert_eq!(forward_policy(""), None);
    }

    #[test]
    fn restore_input_declares_the_chain_and_inserts_the_jump_only_when_asked() {
        let r = ForwardRules::new(IpFamily::V6, &[n("fd00:10:244:1::/64")]);
        let with = r.restore_input(true);
        assert!(with.starts_with("*filter\n:HEADCNI-FWD - [0:0]\n"));
        assert!(with.contains("-A HEADCNI-FWD -s fd00:10:244:1::/64 "));
        assert!(with.contains("-I FORWARD 1 -m comment --comment headcni-pods -j HEADCNI-FWD\n"));
        assert!(with.ends_with("COMMIT\n"));
        assert!(!r.restore_input(false).contains("-I FORWARD"));
    }
}
