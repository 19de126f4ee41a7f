//! The program inside `zstack-installer-<version>.bin`; see the `zstack_installer` crate.

fn main() {
    std::process::exit(zstack_installer::main_with_args(
        std::env::args_os().collect(),
    ));
}
