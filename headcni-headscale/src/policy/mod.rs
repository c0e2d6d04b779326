//! The Headscale policy a HeadCNI cluster needs, per Headscale version, and a checker for an
//! operator's policy file (`headcni policy`, `headcni policy check FILE`).
//!
//! Since Headscale 0.26 a node sees a peer's subnet route only when an ACL rule lets it reach
//! that prefix (`hscontrol/policy/policy.go` `ReduceRoutes`, `hscontrol/types/node.go`
//! `CanAccessRoute`), so pod CIDRs need an ACL with the cluster CIDR as destination. Route
//! auto-approval needs `autoApprovers.routes` with a prefix containing the PodCIDR and an
//! approver that resolves to the node: a `tag:` only to nodes carrying the tag (and that tag
//! must be in `tagOwners`), a user only to that user's untagged nodes
//! (`hscontrol/policy/v2/types.go`; `hscontrol/policy/acls.go` on 0.25).
//!
//! - [`PolicyVersion`]: the policy generations that differ for HeadCNI.
//! - [`parse_hujson`]: HuJSON (comments, trailing commas) into JSON, bounded.
//! - [`PolicyRequirements`] and [`render_fragment`]: the fragment to merge into the policy.
//! - [`check_policy`]: what a given policy lacks, one [`Finding`] per missing piece.
//!
//! Pure: no I/O.

mod check;
mod fragment;
mod hujson;
mod version;

pub use check::{Finding, check_policy};
pub use fragment::{Approver, PolicyRequirements, render_fragment};
pub use hujson::{MAX_POLICY_BYTES, parse_hujson};
pub use version::PolicyVersion;

/// Errors of the policy helpers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The document is not HuJSON (Headscale: `parsing HuJSON: …`).
    #[error("parsing HuJSON: {0}")]
    Syntax(String),
    /// The document exceeds [`MAX_POLICY_BYTES`].
    #[error("policy is {0} bytes, more than the {MAX_POLICY_BYTES} accepted")]
    TooLarge(usize),
    /// A Headscale version this module does not know (`0.25`, `0.26`, `0.27`, `0.28`, `0.29`,
    /// `main`).
    #[error("unknown Headscale version {0:?}: expected 0.25, 0.26, 0.27, 0.28, 0.29 or main")]
    UnknownVersion(String),
    /// Requirements that cannot produce a working policy (no cluster CIDR, a malformed tag or
    /// user name).
    #[error("invalid requirements: {0}")]
    Requirements(String),
}
