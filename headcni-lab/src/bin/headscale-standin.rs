//! `headscale-standin`: the lab's test double of Headscale (see
//! `headcni_lab::headscale_standin` and `docs/lab-standins.md`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = headcni_lab::headscale_standin::Args::parse();
    headcni_lab::exit_code(
        "headscale-standin",
        headcni_lab::run_standin(headcni_lab::headscale_standin::run(args)),
    )
}
