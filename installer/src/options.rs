//! The installer's command line. ZStack's own letters are kept where ZStack had them
//! (`-r -I -z -D -k -F -q -d`); everything else is a long option. Unknown options are an error.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "zstack-installer",
    about = "ZStack offline installer: installs and starts the management node and the KVM host agent",
    disable_version_flag = true,
    override_usage = "bash zstack-installer-<version>.bin [OPTIONS]",
    after_help = "Without options: a fresh all-in-one install (management node + host agent) on this host.\n\
                  Test aids (not for production): ZSTACK_OS_RELEASE=<file> points OS detection at another os-release."
)]
pub struct Options {
    /// Verify the file's integrity only; change nothing.
    #[arg(long)]
    pub check: bool,
    /// Print product, version, build date, sizes and checksums.
    #[arg(long)]
    pub info: bool,
    /// List the files in the payload.
    #[arg(long)]
    pub list: bool,
    /// Unpack the release tree into DIR without installing.
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,

    /// Upgrade the installed release to this one (1.0.x and 1.1.x and older 1.2 patch levels).
    #[arg(short = 'u')]
    pub upgrade: bool,
    /// Install root.
    #[arg(short = 'r', value_name = "DIR", default_value = "/usr/local/zstack")]
    pub install_root: PathBuf,
    /// Management node IP (default: the address of the interface with the default route).
    #[arg(short = 'I', value_name = "IP")]
    pub management_ip: Option<String>,
    /// Install, but do not start the services.
    #[arg(short = 'z')]
    pub no_start: bool,
    /// Drop an existing database (a copy is kept in /var/lib/zstack/mysql-backup).
    #[arg(short = 'D')]
    pub drop_db: bool,
    /// Keep an existing database, migrating it to this release.
    #[arg(short = 'k')]
    pub keep_db: bool,
    /// Force: replace files that are in the way.
    #[arg(short = 'F')]
    pub force: bool,
    /// Quiet: print only errors and the summary.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Debug output.
    #[arg(short = 'd')]
    pub debug: bool,

    /// Install everything under DIR (for images and tests) and start nothing.
    #[arg(long, value_name = "DIR")]
    pub sysroot: Option<PathBuf>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Install only the KVM host agent (a host that joins an existing management node).
    #[arg(long)]
    pub host_only: bool,

    /// The .bin to read (set by the header; for running the program on its own).
    #[arg(long, hide = true, env = "ZSTACK_BIN_PATH")]
    pub bin: Option<PathBuf>,
}

impl Options {
    /// Options that only read the .bin.
    pub fn is_read_only_mode(&self) -> bool {
        self.check || self.info || self.list || self.extract.is_some()
    }
}
