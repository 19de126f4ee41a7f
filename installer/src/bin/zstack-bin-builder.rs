//! Builds `zstack-installer-<version>.bin` from compiled programs and the repository's
//! templates, migrations and header. `make bin` runs it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use zstack_installer::assemble::{build, BuildInputs};

#[derive(Parser)]
#[command(
    name = "zstack-bin-builder",
    about = "Assemble the ZStack offline installer .bin"
)]
struct Args {
    /// Release version the .bin is labelled as (x.y.z).
    #[arg(long)]
    version: String,
    /// The multi-call `zstack` program (also run as `zstack-installer`).
    #[arg(long)]
    zstack: PathBuf,
    /// The `zstack-unpack` program the header runs.
    #[arg(long)]
    unpacker: PathBuf,
    #[arg(long, default_value = "templates")]
    templates: PathBuf,
    #[arg(long, default_value = "payload/migrations")]
    migrations: PathBuf,
    #[arg(long, default_value = "scripts/header.sh")]
    header: PathBuf,
    /// zstd level of the payload (1-22).
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let version = semver::Version::parse(&a.version)
        .with_context(|| format!("--version {}: not a semantic version x.y.z", a.version))?;
    let t = build(&BuildInputs {
        version,
        zstack_program: a.zstack,
        unpacker_program: a.unpacker,
        templates_dir: a.templates,
        migrations_dir: a.migrations,
        header_template: a.header,
        out: a.out.clone(),
        zstd_level: a.level,
    })?;
    println!(
        "built {} ({} bytes: header {}, installer {}, payload {}, unpacker {}; {} bytes in {} files)",
        a.out.display(),
        t.total_size,
        t.header_size,
        t.installer_size,
        t.payload_size,
        t.unpacker_size,
        t.unpacked_size,
        t.file_count
    );
    Ok(())
}
