//! The PodCIDR source trait and discovery's precedence (no I/O here): each source answers
//! "this node's PodCIDR(s), from here" or "nothing here"; [`first_found`] asks them in order
//! and the first answer wins. The node agent's sources (`headcni_node::podcidr`: config,
//! `NODE_POD_CIDR`, the Kubernetes Node watch, kubelet/k3s files, the name hash) implement
//! [`PodCidrSource`]; an embedder can put its own in the list.

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Where the node's PodCIDR came from (the order of the node agent's discovery: config, env,
/// Kubernetes Node, local kubelet/k3s files, name hash). Reported in `/status` (kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodCidrOrigin {
    /// `[node] pod_cidr` in the config file (or its flag).
    Config,
    /// The `NODE_POD_CIDR` environment variable.
    Env,
    /// The Kubernetes Node object's `spec.podCIDRs`.
    KubernetesNode,
    /// Local kubelet or k3s files.
    LocalFiles,
    /// A hash of the node name inside the cluster CIDR (opt-in).
    NameHash,
}

/// A source's answer: the node's CIDRs and where exactly they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPodCidrs {
    /// The node's CIDRs, IPv4 first (at most one per family).
    pub cidrs: Vec<IpNetwork>,
    /// Which key, variable, object or file they came from, for people.
    pub detail: String,
}

/// One PodCIDR source.
#[async_trait]
pub trait PodCidrSource: Send + Sync {
    /// The source's error (a value that does not parse, an unreadable file, an unusable
    /// API client, ...).
    type Error: std::error::Error + Send + Sync + 'static;
    /// What the source reports as [`PodCidrOrigin`] when it answers.
    fn origin(&self) -> PodCidrOrigin;
    /// How the source is named in "tried: ..." when it has no answer, e.g. `[node] pod_cidr`.
    fn tried(&self) -> String;
    /// This node's CIDRs from this source; `Ok(None)` when the source has nothing (the next
    /// one is asked). A source may wait (the Kubernetes Node watch waits for the
    /// controller-manager); the caller bounds it by dropping the future (cancellation).
    ///
    /// Errors: the source holds something unusable; discovery stops there (later sources
    /// could contradict it).
    async fn lookup(&self) -> Result<Option<FoundPodCidrs>, Self::Error>;
}

/// The outcome of [`first_found`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The first source with an answer: its origin and answer.
    Found(PodCidrOrigin, FoundPodCidrs),
    /// No source answered; what was tried, in order ([`PodCidrSource::tried`]).
    NotFound(Vec<String>),
}

/// Asks `sources` in order; the first answer wins and later sources are not asked.
///
/// Errors: the first source error (later sources are not asked either).
pub async fn first_found<E>(sources: &[Box<dyn PodCidrSource<Error = E>>]) -> Result<Discovery, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut tried = Vec::new();
    for s in sources {
        if let Some(found) = s.lookup().await? {
            return Ok(Discovery::Found(s.origin(), found));
        }
        tried.push(s.tried());
    }
    Ok(Discovery::NotFound(tried))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("bad source")]
    struct Bad;

    struct Fixed(PodCidrOrigin, Option<&'static str>, bool, Arc<AtomicUsize>);

    #[async_trait]
    impl PodCidrSource for Fixed {
        type Error = Bad;
        fn origin(&self) -> PodCidrOrigin {
            self.0
        }
        fn tried(&self) -> String {
            format!("{:?}", self.0)
        }
        async fn lookup(&self) -> Result<Option<FoundPodCidrs>, Bad> {
            self.3.fetch_add(1, Ordering::SeqCst);
            if self.2 {
                return Err(Bad);
            }
            Ok(self.1.map(|c| FoundPodCidrs {
                cidrs: vec![c.parse().unwrap()],
                detail: c.into(),
            }))
        }
    }

    fn src(
        o: PodCidrOrigin,
        c: Option<&'static str>,
        fail: bool,
        n: &Arc<AtomicUsize>,
    ) -> Box<dyn PodCidrSource<Error = Bad>> {
        Box::new(Fixed(o, c, fail, n.clone()))
    }

    #[test]
    fn first_answer_wins_and_later_sources_are_not_asked() {
        let n = Arc::new(AtomicUsize::new(0));
        let sources = vec![
            src(PodCidrOrigin::Config, None, false, &n),
            src(PodCidrOrigin::Env, Some("10.244.1.0/24"), false, &n),
            src(PodCidrOrigin::LocalFiles, Some("10.244.2.0/24"), false, &n),
        ];
        let d = futures::executor::block_on(first_found(&sources)).unwrap();
        match d {
            Discovery::Found(PodCidrOrigin::Env, f) => assert_eq!(f.detail, "10.244.1.0/24"),
            other => panic!("{other:?}"),
        }
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_error_stops_discovery_and_nothing_lists_what_was_tried() {
        let n = Arc::new(AtomicUsize::new(0));
        let failing = vec![
            src(PodCidrOrigin::Config, None, true, &n),
            src(PodCidrOrigin::Env, Some("10.244.1.0/24"), false, &n),
        ];
        assert!(futures::executor::block_on(first_found(&failing)).is_err());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let empty = vec![
            src(PodCidrOrigin::Config, None, false, &n),
            src(PodCidrOrigin::Env, None, false, &n),
        ];
        assert_eq!(
            futures::executor::block_on(first_found(&empty)).unwrap(),
            Discovery::NotFound(vec!["Config".into(), "Env".into()])
        );
    }
}
