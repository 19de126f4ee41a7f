//! One program, five names (as rustup does): the release tree links `zstack-server`,
//! `zstack-kvmagent`, `zstack-ctl` and `zstack-cli` to this binary, the `.bin`'s header runs it
//! as `zstack-installer`, and the name it was run as picks the part. `zstack <name> args...`
//! works too.

use std::ffi::OsString;
use std::path::Path;

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let mut name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "zstack" && args.len() > 1 {
        args.remove(0);
        name = args[0].to_string_lossy().into_owned();
    }
    let code = match name.as_str() {
        "zstack-server" => service(zstack_server::run()),
        "zstack-kvmagent" => service(zstack_kvmagent::run()),
        "zstack-ctl" => {
            default_sigpipe();
            zstack_ctl::main_with_args(args)
        }
        "zstack-installer" => zstack_installer::main_with_args(args),
        "zstack-cli" => {
            default_sigpipe();
            zstack_cli::main_with_args(
                args.iter()
                    .skip(1)
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            )
        }
        other => {
            eprintln!(
                "zstack: run me as zstack-server, zstack-kvmagent, zstack-ctl, zstack-cli or zstack-installer (not {other:?})"
            );
            2
        }
    };
    std::process::exit(code);
}

/// `zstack-ctl status | head` must end quietly, as any Unix tool does, not panic on the closed
/// pipe; Rust starts with SIGPIPE ignored. Only the two short-lived tools get the default back:
/// the services keep ignoring it, so a client that hangs up cannot kill them.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL installs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn service(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
