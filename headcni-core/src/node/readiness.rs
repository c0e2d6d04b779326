//! The node agent's readiness (`/readyz`) as a pure aggregation (no I/O): which of the
//! node's parts are not in place, each as one reason for people.

use crate::control::Readiness;

/// What `/readyz` looks at, from the node agent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeReadiness<'a> {
    /// The PodCIDR is known.
    pub pod_cidr_known: bool,
    /// The conflist in the sink is the wanted one.
    pub conflist_written: bool,
    /// The firewall driver manages the masquerade rule set (`false` for the `none` driver).
    pub masquerade_managed: bool,
    /// The data plane, masquerade rule set included, is in place (meaningful when
    /// `masquerade_managed`).
    pub masquerade_ready: bool,
    /// The data plane (bridge, forwarding; and the rule set when managed) is in place.
    pub dataplane_ready: bool,
    /// The control plane's readiness, `None` before its first reconcile.
    pub control: Option<&'a Readiness>,
}

/// Why the node is not ready; empty when ready. In order: PodCIDR, conflist, data plane
/// (`masquerade rules not in place` with a managing firewall driver, else `data plane
/// (bridge, forwarding) not in place`), control plane (`control plane: <reason>: <detail>`,
/// the reason kebab-case as in [`crate::control::NotReadyReason::as_str`]).
pub fn not_ready_reasons(r: &NodeReadiness) -> Vec<String> {
    let mut out = Vec::new();
    if !r.pod_cidr_known {
        out.push("PodCIDR not known yet".to_owned());
    }
    if !r.conflist_written {
        out.push("CNI conflist not written".to_owned());
    }
    if r.masquerade_managed {
        if !r.masquerade_ready {
            out.push("masquerade rules not in place".to_owned());
        }
    } else if !r.dataplane_ready {
        out.push("data plane (bridge, forwarding) not in place".to_owned());
    }
    match r.control {
        None => out.push("control plane not reconciled yet".to_owned()),
        Some(Readiness::NotReady { reason, detail }) => {
            out.push(format!("control plane: {}: {detail}", reason.as_str()));
        }
        Some(Readiness::Ready) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::NotReadyReason;

    fn all_ready(control: &Readiness) -> NodeReadiness<'_> {
        NodeReadiness {
            pod_cidr_known: true,
            conflist_written: true,
            masquerade_managed: true,
            masquerade_ready: true,
            dataplane_ready: true,
            control: Some(control),
        }
    }

    #[test]
    fn ready_when_every_part_is_in_place() {
        assert!(not_ready_reasons(&all_ready(&Readiness::Ready)).is_empty());
    }

    #[test]
    fn each_missing_part_is_one_reason_in_order() {
        let r = NodeReadiness {
            pod_cidr_known: false,
            conflist_written: false,
            masquerade_managed: true,
            masquerade_ready: false,
            dataplane_ready: false,
            control: None,
        };
        assert_eq!(
            not_ready_reasons(&r),
            [
                "PodCIDR not known yet",
                "CNI conflist not written",
                "masquerade rules not in place",
                "control plane not reconciled yet"
            ]
        );
        let not_approved = Readiness::NotReady {
            reason: NotReadyReason::NotApproved,
            detail: "waiting for approval".into(),
        };
        assert_eq!(
            not_ready_reasons(&all_ready(&not_approved)),
            ["control plane: not-approved: waiting for approval"]
        );
    }

    #[test]
    fn driver_none_neither_requires_nor_claims_the_masquerade_rules() {
        let ready = Readiness::Ready;
        let mut r = all_ready(&ready);
        r.masquerade_managed = false;
        r.masquerade_ready = false;
        assert!(not_ready_reasons(&r).is_empty());
        r.dataplane_ready = false;
        assert_eq!(
            not_ready_reasons(&r),
            ["data plane (bridge, forwarding) not in place"]
        );
    }
}
