//! `headcni policy`: prints the Headscale policy fragment a cluster needs
//! ([`headcni_headscale::policy::render_fragment`]); `headcni policy check FILE` checks a
//! policy file against it ([`headcni_headscale::policy::check_policy`]) and exits non-zero
//! naming each missing piece.

use std::path::PathBuf;

use anyhow::{Context, bail};
use headcni_headscale::policy::{
    Approver, MAX_POLICY_BYTES, PolicyRequirements, PolicyVersion, check_policy, render_fragment,
};
use ipnetwork::IpNetwork;

/// `headcni policy` arguments.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Cluster CIDR (repeat for dual stack): every node's PodCIDR lies inside one.
    #[arg(long = "cluster-cidr", required = true)]
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Headscale version: 0.25, 0.26, 0.27, 0.28, 0.29 or main.
    #[arg(long = "headscale-version", default_value = "0.29")]
    pub version: String,
    /// Approve PodCIDR routes by this tag (nodes registered with a pre-auth key carrying it).
    #[arg(long, conflicts_with = "approver_user")]
    pub approver_tag: Option<String>,
    /// Approve PodCIDR routes for this user's untagged nodes (a name without `@`).
    #[arg(long)]
    pub approver_user: Option<String>,
    /// The user owning the approver tag in `tagOwners` (with `--approver-tag`).
    #[arg(long)]
    pub tag_owner: Option<String>,
    /// `check FILE`: check a policy file instead of printing the fragment.
    #[command(subcommand)]
    pub check: Option<PolicyCmd>,
}

/// `headcni policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Check a Headscale policy file (HuJSON) against what the cluster needs.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

fn requirements(a: &PolicyArgs) -> anyhow::Result<PolicyRequirements> {
    let version: PolicyVersion = a.version.parse()?;
    let approver = match (&a.approver_tag, &a.approver_user) {
        (Some(t), None) => Approver::Tag(t.clone()),
        (None, Some(u)) => Approver::User(u.clone()),
        _ => bail!("give --approver-tag TAG (with --tag-owner USER) or --approver-user USER"),
    };
    Ok(PolicyRequirements {
        cluster_cidrs: a.cluster_cidrs.clone(),
        version,
        approver,
        tag_owner: a.tag_owner.clone(),
    })
}

/// Runs `headcni policy`: prints the fragment (exit 0) or the check's findings (exit 1 when
/// anything is missing).
///
/// Errors: bad arguments, an unreadable or oversized file.
pub fn run(a: &PolicyArgs) -> anyhow::Result<i32> {
    let req = requirements(a)?;
    match &a.check {
        None => {
            print!("{}", render_fragment(&req)?);
            Ok(0)
        }
        Some(PolicyCmd::Check { file }) => {
            let len = std::fs::metadata(file)
                .with_context(|| format!("read {}", file.display()))?
                .len();
            if len > MAX_POLICY_BYTES as u64 {
                bail!(
                    "{}: {len} bytes, more than {MAX_POLICY_BYTES}",
                    file.display()
                );
            }
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            let findings = check_policy(&text, &req)?;
            if findings.is_empty() {
                println!(
                    "{}: has what HeadCNI needs on Headscale {}",
                    file.display(),
                    req.version
                );
                return Ok(0);
            }
            for f in &findings {
                println!("{}: {f}", file.display());
            }
            println!("print the missing pieces with `headcni policy` (same flags, no `check`)");
            Ok(1)
        }
    }
}
