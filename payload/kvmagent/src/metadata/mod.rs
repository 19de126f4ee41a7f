//! The EC2-style metadata server of the flat network provider: `http://169.254.169.254/` inside
//! each L3 network's namespace, served by the agent itself (the original ran one lighttpd per
//! namespace over a tree of files).
//!
//! - [`MetadataStore`] (`store.rs`): what each VM is told, keyed by (L3 uuid, VM IP), one JSON file per VM
//!   under a directory (`/var/lib/zstack/kvmagent/metadata/<vm>.json`, see [`store_dir`]), loaded
//!   at construction so a restarted agent keeps serving the VMs that kept running. Shared by
//!   every listener (one per L3 namespace); lookups take a read lock for a hash lookup only.
//! - [`router`] (`imds.rs`): the HTTP answers, EC2's layout (`/`, `/latest/`, `/latest/meta-data/...`,
//!   `/latest/user-data`, `/latest/dynamic/instance-identity/document`, IMDSv2 tokens from
//!   `PUT /latest/api/token`). The VM is the connection's source address: the L3 namespace
//!   only sees the VMs of its L3, and their addresses are the agent's to give. Headers such as
//!   `X-Forwarded-For` are never trusted (a token request carrying one is refused, as EC2 does).
//! - [`serve_in_netns`] (`listener.rs`): binds the listening socket inside a named network namespace and serves
//!   it on a dedicated thread that runs its own single-threaded tokio runtime; the returned
//!   [`MetadataListener`] stops it (`stop`, or dropping it).
//!
//! Why a runtime per listener rather than the agent's: `setns` only moves the calling thread, so
//! the socket has to be made on a thread of its own anyway; once made, a socket stays in its
//! namespace whichever thread uses it. Serving it on a runtime of its own keeps each L3's server
//! independent of the agent's API runtime (a VM flooding its metadata server cannot take threads
//! from the agent's API, and the agent's runtime needs no handle passed around), lets the caller
//! start and stop listeners from synchronous code (the VM and network handlers run on the
//! blocking pool), and stopping one is dropping its runtime. The cost is one thread per L3
//! namespace on the host. [`bind_in_netns`] is public for a caller that prefers to serve the
//! socket on a runtime of its own choosing.
//! - [`user_data_for`] (`cloud_config.rs`): the `#cloud-config` a VM without user data of its own
//!   is served.

mod cloud_config;
mod imds;
mod listener;
mod store;
#[cfg(test)]
mod test_support;

pub use zstack_common::agent_proto::{NicSpec, VmMetadata, VmSpec};

pub use cloud_config::user_data_for;
pub use cloud_config::CloudConfigError;
pub use imds::{router, VERSIONS};
pub use listener::{
    bind_in_netns, serve_in_netns, serve_listener, ListenerError, MetadataListener,
};
pub use store::{records_of, store_dir, MetadataStore, StoreError, VmRecord};

/// The address VMs ask.
pub const METADATA_IP: &str = "169.254.169.254";
/// The flat network service that makes an L3's VMs known to the metadata server.
pub const USERDATA_SERVICE: &str = "Userdata";
/// IMDSv2: the token a request carries.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// IMDSv2: the lifetime asked for in `PUT /latest/api/token`, and answered with the token.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// EC2's longest token lifetime (6 hours).
pub const MAX_TOKEN_TTL_SECS: u64 = 21_600;
