use std::sync::Mutex;

use async_trait::async_trait;
use headcni_core::node::firewall::NoFirewall;
use headcni_core::node::masq::MasqueradePlan;
use headcni_core::plugin::Namespaces;
use headcni_core::plugin::testing::FakeNs;

use super::*;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// A firewall that keeps the applied plan in memory, as nft keeps the table.
#[derive(Default)]
struct MemFirewall {
    live: Mutex<Option<MasqueradePlan>>,
    applies: Mutex<u32>,
}

#[async_trait]
impl FirewallDriver for MemFirewall {
    fn name(&self) -> &str {
        "mem"
    }
    fn manages_masquerade(&self) -> bool {
        true
    }
    async fn in_place(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        Ok(self.live.lock().unwrap().as_ref() == Some(plan))
    }
    async fn apply(&self, plan: &MasqueradePlan) -> Result<bool, FirewallError> {
        *self.applies.lock().unwrap() += 1;
        let mut live = self.live.lock().unwrap();
        let changed = live.as_ref() != Some(plan);
        *live = Some(plan.clone());
        Ok(changed)
    }
    async fn remove(&self, _table: &str) -> Result<bool, FirewallError> {
        Ok(self.live.lock().unwrap().take().is_some())
    }
}

#[test]
fn defaults() {
    let p = DataplaneParams::new(vec![net("10.244.1.0/24")], vec![]);
    assert_eq!(p.bridge, "headcni0");
    assert_eq!(p.table, "headcni");
    assert_eq!(p.mtu, None);
    assert!(!DataplaneReport::default().changed());
}

#[tokio::test]
async fn invalid_parameters_fail_before_any_change() {
    // These fail in validation, before a netlink socket is even opened.
    let mut p = DataplaneParams::new(vec![], vec![]);
    let e = reconcile(&p).await.unwrap_err();
    assert!(
        matches!(e, DataplaneError::Plan(MasqError::NoPodCidr)),
        "{e:?}"
    );
    p.pod_cidrs = vec![net("10.244.1.0/24")];
    p.cluster_cidrs = vec![net("10.245.0.0/16")];
    let e = reconcile(&p).await.unwrap_err();
    assert!(
        matches!(e, DataplaneError::Plan(MasqError::PodOutsideCluster { .. })),
        "{e:?}"
    );
    p.cluster_cidrs.clear();
    p.table = "bad name".into();
    assert!(reconcile(&p).await.is_err());
    assert!(teardown("bad name").await.is_err());
    // and nothing was touched through the traits either
    let ns = FakeNs::default();
    let h = ns.host().await.unwrap();
    let fw = MemFirewall::default();
    assert!(reconcile_with(&h, &h, &fw, &p).await.is_err());
    assert!(ns.w().log.is_empty());
    assert_eq!(*fw.applies.lock().unwrap(), 0);
}

#[tokio::test]
async fn one_pass_repairs_then_nothing_changes() {
    let ns = FakeNs::default();
    let h = ns.host().await.unwrap();
    let fw = MemFirewall::default();
    let mut p = DataplaneParams::new(vec![net("10.244.1.0/24")], vec![net("10.244.0.0/16")]);
    p.mtu = Some(1280);
    let r = reconcile_with(&h, &h, &fw, &p).await.unwrap();
    assert_eq!(
        r,
        DataplaneReport {
            bridge_changed: true,
            forwarding_changed: true,
            masquerade_changed: true
        }
    );
    assert_eq!(
        reconcile_with(&h, &h, &fw, &p).await.unwrap(),
        DataplaneReport::default()
    );
    assert_eq!(
        *fw.applies.lock().unwrap(),
        1,
        "not re-applied when in place"
    );
    // the table goes (uninstall): only it comes back
    assert!(teardown_with(&fw, "headcni").await.unwrap());
    let r = reconcile_with(&h, &h, &fw, &p).await.unwrap();
    assert_eq!(
        r,
        DataplaneReport {
            masquerade_changed: true,
            ..DataplaneReport::default()
        }
    );
}

#[tokio::test]
async fn driver_none_keeps_bridge_and_forwarding_and_never_touches_the_firewall() {
    let ns = FakeNs::default();
    let h = ns.host().await.unwrap();
    let p = DataplaneParams::new(vec![net("10.244.1.0/24")], vec![]);
    let r = reconcile_with(&h, &h, &NoFirewall, &p).await.unwrap();
    assert!(r.bridge_changed && r.forwarding_changed && !r.masquerade_changed);
    assert!(!teardown_with(&NoFirewall, "headcni").await.unwrap());
}

#[tokio::test]
async fn a_failing_step_is_named() {
    let ns = FakeNs::default();
    ns.w().fail_on = Some("ensure_bridge");
    let h = ns.host().await.unwrap();
    let fw = MemFirewall::default();
    let p = DataplaneParams::new(vec![net("10.244.1.0/24")], vec![]);
    let e = reconcile_with(&h, &h, &fw, &p).await.unwrap_err();
    assert_eq!(e.to_string(), "ensure bridge headcni0");
    assert_eq!(
        *fw.applies.lock().unwrap(),
        0,
        "later steps are not attempted"
    );
}
