//! The main plugin's own STATUS check (CNI spec 1.1.0 §"STATUS"): can the bridge of ADD be
//! made? (The IPAM's check and the node daemon's readiness are asked by the caller.)

use super::Namespaces;
use crate::cni::{CniError, ErrorCode};
use crate::link::LinkManager;

/// Code 50 (the plugin is not available) when ADD could not make `bridge` in the host
/// namespace: a link of that name exists and is not a bridge (ADD's `ensure_bridge` would
/// fail on it), or the host namespace's links cannot be read. A missing bridge is fine: ADD
/// creates it. One netlink query; never changes anything.
///
/// # Errors
/// [`CniError`] code 50 naming the bridge and why.
pub async fn bridge_status<N: Namespaces + ?Sized>(ns: &N, bridge: &str) -> Result<(), CniError> {
    let unavailable = |details: String| {
        Err(CniError::new(
            ErrorCode::NotAvailable,
            format!("the bridge {bridge} cannot be made"),
        )
        .with_details(details))
    };
    let host = match ns.host().await {
        Ok(h) => h,
        Err(e) => return unavailable(format!("opening the host namespace: {e}")),
    };
    match host.link(bridge).await {
        Ok(None) => Ok(()),
        Ok(Some(l)) if l.kind.as_deref() == Some("bridge") => Ok(()),
        Ok(Some(l)) => unavailable(format!(
            "a link of kind {} holds the name {bridge}",
            l.kind.as_deref().unwrap_or("unknown")
        )),
        Err(e) => unavailable(format!("reading the link {bridge}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::testing::{FakeNs, HOST, info};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn missing_or_bridge_is_available_another_kind_is_50() {
        let ns = FakeNs::default();
        block_on(bridge_status(&ns, "headcni0")).expect("a missing bridge is made by ADD");
        {
            let mut w = ns.0.lock().unwrap();
            let br = info(&mut w, "headcni0", "bridge", None);
            let dummy = info(&mut w, "taken0", "dummy", None);
            let host = w.links.entry(HOST.into()).or_default();
            host.insert("headcni0".into(), (br, Vec::new()));
            host.insert("taken0".into(), (dummy, Vec::new()));
        }
        block_on(bridge_status(&ns, "headcni0")).expect("an existing bridge");
        let e = block_on(bridge_status(&ns, "taken0")).unwrap_err();
        assert_eq!(e.code, 50);
        assert!(e.details.contains("dummy"), "{e:?}");
    }
}
