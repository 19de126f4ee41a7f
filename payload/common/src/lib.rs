//! Pieces every part of the ZStack stack shares: where files live on a host ([`layout`]), the
//! `zstack.properties` file ([`properties`]), what a release tree is ([`release`]), rendering of
//! the files under `templates/` ([`templates`]), the two long-running services ([`service`]), the management node's user and files
//! ([`server_files`]), and
//! small file-system primitives that make every write atomic ([`fsutil`]), the programs behind pid
//! files ([`process`]) and the HTTP client every part makes ([`http_client`]).

pub mod agent_proto;
pub mod fsutil;
pub mod grammar;
pub mod health;
pub mod http_client;
pub mod layout;
pub mod logfile;
pub mod os;
pub mod process;
pub mod properties;
pub mod release;
pub mod secret;
pub mod server_files;
pub mod service;
pub mod suggest;
pub mod templates;

pub use layout::Layout;
pub use properties::Properties;
pub use release::Release;
pub use service::Service;

/// The product name, as the installer, `--info` and the health endpoints print it.
pub const PRODUCT: &str = "ZStack";
