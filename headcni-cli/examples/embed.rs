//! Embedding HeadCNI: a complete CNI ADD/DEL plugin in a few lines on the library crates.
//!
//! Build it and run it like any CNI plugin (`CNI_COMMAND=ADD CNI_CONTAINERID=... CNI_NETNS=...
//! CNI_IFNAME=eth0 ./embed < conf.json`), with a configuration whose `ipam.type` is
//! `headcni-ipam`. Real plugins also handle CHECK/GC/STATUS/VERSION and delegated IPAM, as
//! `headcni` does.

use std::io::Read;

use headcni_core::cni::{CniEnv, CniError, Command, ErrorCode, NetConf};
use headcni_core::ipam::Attachment;
use headcni_core::plugin::{self, AddRequest, BridgeConf, DelRequest};
use headcni_ipam::{InProcessIpam, IpamPlugin};
use headcni_netlink::NetlinkNamespaces;

async fn run() -> Result<Option<serde_json::Value>, CniError> {
    // The CNI protocol: environment + configuration on stdin (CNI spec 1.1.0).
    let env = CniEnv::from_vars(std::env::vars())?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(ErrorCode::Io, "reading stdin").with_details(e.to_string()))?;
    let parsed = NetConf::<BridgeConf>::parse(&stdin)?;

    // IPAM in-process (host-local compatible store) and rtnetlink for links and routes.
    let ipam = InProcessIpam {
        plugin: IpamPlugin::from_conf(&parsed.conf)?,
        attachment: Attachment {
            container_id: env.container_id().to_owned(),
            ifname: env.ifname().to_owned(),
        },
        requested: IpamPlugin::requested_ips(&parsed.conf, &env.args)?,
    };
    let ns = NetlinkNamespaces;

    match (env.command, env.netns.as_deref()) {
        (Command::Add, Some(netns)) => {
            let req = AddRequest {
                container_id: env.container_id(),
                ifname: env.ifname(),
                netns,
                mac: None,
                dns: parsed.conf.dns.as_ref(),
            };
            let result = plugin::add(&ns, &ipam, &parsed.conf.plugin, &req).await?;
            Ok(Some(result.to_json(parsed.version)))
        }
        (Command::Del, netns) => {
            let req = DelRequest {
                container_id: env.container_id(),
                ifname: env.ifname(),
                netns,
            };
            plugin::del(&ns, &ipam, &req).await.map(|()| None)
        }
        _ => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "this example does ADD and DEL",
        )),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match rt {
        Ok(rt) => rt.block_on(run()),
        Err(e) => Err(CniError::new(ErrorCode::Internal, "runtime").with_details(e.to_string())),
    };
    match outcome {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json("1.1.0"));
            std::process::exit(e.exit_code());
        }
    }
}
