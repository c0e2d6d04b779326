//! `tailscaled-standin`: the lab's test double of tailscaled (see
//! `headcni_lab::tailscaled_standin` and `docs/lab-standins.md`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = headcni_lab::tailscaled_standin::Args::parse();
    headcni_lab::exit_code(
        "tailscaled-standin",
        headcni_lab::run_standin(headcni_lab::tailscaled_standin::run(args)),
    )
}
