//! Why an autoApprovers policy may not match this node: the policy is invisible to the node
//! (no API key), but the node's own identity is not — a tag-owned node or a user-owned one —
//! and that decides which approver can match it.

use crate::control::{NotReadyReason, Readiness};

/// With `approval = "auto-approvers"` and the routes not approved, the note that says which
/// approver can match this node, from its ACL tags (LocalAPI `Self.Tags`): an untagged node
/// only matches a user approver (`user@`; a bare name on Headscale 0.25), a tagged node only
/// a `tag:` approver it carries (Headscale ≥ 0.28 resolves a tag only to nodes carrying it and
/// a user only to its untagged nodes, headscale `hscontrol/policy/v2/types.go`). `None` when
/// the routes are approved or the failure is something else.
pub fn approver_note(readiness: &Readiness, tags: &[String]) -> Option<String> {
    let Readiness::NotReady {
        reason: NotReadyReason::NotApproved,
        ..
    } = readiness
    else {
        return None;
    };
    Some(if tags.is_empty() {
        "this node carries no ACL tag (user-owned): only an autoApprovers entry naming its user (`user@`; `user` on Headscale 0.25) can approve its PodCIDR, a `tag:` approver never matches it; in daemon mode [headscale] acl_tags makes it tag-owned".to_owned()
    } else {
        format!(
            "this node carries the ACL tags {}: only an autoApprovers entry naming one of them can approve its PodCIDR (on Headscale ≥ 0.28 a user approver never matches a tagged node), and each must be in tagOwners",
            tags.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_approved() -> Readiness {
        Readiness::NotReady {
            reason: NotReadyReason::NotApproved,
            detail: "advertised but not approved".into(),
        }
    }

    #[test]
    fn the_note_names_the_approver_this_node_can_match() {
        let user_owned = approver_note(&not_approved(), &[]).unwrap();
        assert!(user_owned.contains("no ACL tag"), "{user_owned}");
        assert!(user_owned.contains("acl_tags"), "{user_owned}");
        let tagged = approver_note(&not_approved(), &["tag:headcni".into()]).unwrap();
        assert!(tagged.contains("tag:headcni"), "{tagged}");
        assert!(tagged.contains("tagOwners"), "{tagged}");
        assert_eq!(approver_note(&Readiness::Ready, &[]), None);
        let other = Readiness::NotReady {
            reason: NotReadyReason::Unreachable,
            detail: String::new(),
        };
        assert_eq!(approver_note(&other, &[]), None);
    }
}
