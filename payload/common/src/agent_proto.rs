//! What the management node and a host agent say to each other: JSON over HTTP, every request a
//! `POST` to one of the paths below carrying the install-time secret in
//! [`crate::health::AGENT_SECRET_HEADER`]. Both sides use these types, so the two cannot drift.
//!
//! An agent that does not know a path answers 404; the management node reports that as "the
//! agent on host X does not handle <path>", never as a success.

use serde::{Deserialize, Serialize};

pub mod path {
    pub const CONNECT: &str = "/host/connect";
    pub const PING: &str = "/host/ping";
    pub const CHECK_SMP: &str = "/storage/smp/check";
    pub const START_VM: &str = "/vm/start";
    pub const STOP_VM: &str = "/vm/stop";
    pub const REBOOT_VM: &str = "/vm/reboot";
    pub const DESTROY_VM: &str = "/vm/destroy";
    pub const ATTACH_VOLUME: &str = "/volume/attach";
    pub const DETACH_VOLUME: &str = "/volume/detach";
    pub const DELETE_VOLUME: &str = "/volume/delete";
    pub const APPLY_EIP: &str = "/eip/apply";
    pub const REMOVE_EIP: &str = "/eip/remove";
}

/// The answer to [`path::CONNECT`]: what the host has, and the VMs it runs when the agent manages
/// VMs (`None` from an agent that does not report VMs: their states are then left as they are).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    pub cpu_num: i64,
    /// Bytes.
    pub memory_size: i64,
    pub hostname: String,
    pub agent_version: String,
    /// `kvm` where a probe guest ran under KVM, else `qemu` (software emulation, TCG).
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// Why the agent chose `hypervisor` (the setting, or what its probe found).
    #[serde(default)]
    pub virtualization_reason: Option<String>,
    #[serde(default)]
    pub libvirt_version: Option<String>,
    #[serde(default)]
    pub qemu_version: Option<String>,
    #[serde(default)]
    pub vms: Option<Vec<VmReport>>,
    /// Serial (hex) of the certificate the agent serves with.
    #[serde(default)]
    pub certificate_serial: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmReport {
    pub uuid: String,
    /// Running | Paused | Stopped
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckStorage {
    pub url: String,
    /// The primary storage's uuid, kept in an id file at the mount point: every host must find
    /// the same one, or it has another filesystem mounted there.
    #[serde(default)]
    pub uuid: String,
    /// The first check of a storage writes the id file; every later check requires it.
    #[serde(default)]
    pub write_id: bool,
}

/// Bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageCapacity {
    pub total_capacity: i64,
    pub available_capacity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub volume_uuid: String,
    /// Root | Data
    pub r#type: String,
    /// Where the volume's file lives (or is to be made) on the primary storage.
    pub install_path: String,
    /// Bytes (virtual size).
    pub size: i64,
    pub format: String,
    pub device_id: i64,
    /// For a root volume made from an image: where the agent fetches the image
    /// (`http://<management node>/v1/images/<uuid>/download`), and its sha256.
    #[serde(default)]
    pub image_url: Option<String>,
    #[serde(default)]
    pub image_sha256: Option<String>,
    /// The image's format (qcow2 or raw): the root volume is a qcow2 overlay on it.
    #[serde(default)]
    pub image_format: Option<String>,
    #[serde(default)]
    pub image_uuid: Option<String>,
    /// The mount point of the volume's primary storage (the image cache lives under it).
    #[serde(default)]
    pub primary_storage_url: Option<String>,
    /// libvirt's cache mode: none | writethrough | writeback (kvm/vm.cacheMode when the VM
    /// started or the volume was attached).
    pub cache_mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NicSpec {
    pub uuid: String,
    pub l3_network_uuid: String,
    pub mac: String,
    pub ip: String,
    pub netmask: String,
    pub gateway: String,
    pub device_id: i64,
    /// The physical interface of the NIC's L2 network; the bridge is `br_<interface>`.
    pub physical_interface: String,
    /// The flat network services enabled on the NIC's L3: DHCP, Userdata, Eip.
    pub services: Vec<String>,
    pub dns_domain: Option<String>,
    /// The address of the L3's DHCP server on this host's L3 namespace (taken from the L3's
    /// ranges by the management node), when the L3 has DHCP or Userdata.
    #[serde(default)]
    pub dhcp_server_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmSpec {
    pub uuid: String,
    pub name: String,
    pub cpu_num: i64,
    /// Bytes.
    pub memory_size: i64,
    pub root_volume: DiskSpec,
    pub data_volumes: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    /// cloud-init user data, served to the VM by the metadata server.
    pub user_data: Option<String>,
    /// What the metadata server tells the VM about itself.
    #[serde(default)]
    pub metadata: VmMetadata,
}

/// What `http://169.254.169.254/latest/meta-data/` serves a VM (EC2's names).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmMetadata {
    /// `hostname`, `local-hostname`.
    pub hostname: String,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `public-keys/0/openssh-key`.
    #[serde(default)]
    pub ssh_key: Option<String>,
    /// The root password as a SHA-512 crypt hash (never the password): with no user data, the
    /// VM is served a `#cloud-config` that sets it.
    #[serde(default)]
    pub root_password_hash: Option<String>,
    /// IMDSv2: requests need a token from `PUT /latest/api/token`.
    #[serde(default)]
    pub token_required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmRef {
    pub uuid: String,
}

/// Stop: graceful (ACPI shutdown, forced after `timeout_secs`), or at once when `force`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StopVm {
    pub uuid: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default = "default_stop_timeout")]
    pub timeout_secs: u64,
}

fn default_stop_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DestroyVm {
    pub uuid: String,
    /// Files of the VM's volumes to delete with it (its root volume).
    pub delete_paths: Vec<String>,
    pub nics: Vec<NicSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeAttachment {
    pub vm_uuid: String,
    pub disk: DiskSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeleteVolume {
    pub install_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EipSpec {
    pub eip_uuid: String,
    pub vip_uuid: String,
    pub vip_ip: String,
    pub vip_netmask: String,
    pub vip_gateway: String,
    /// The physical interface of the VIP's L2 network (the public side).
    pub public_interface: String,
    pub vm_uuid: String,
    pub nic: NicSpec,
}

/// The body of an agent's refusal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentErrorBody {
    pub error: AgentErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentErrorDetail {
    pub code: String,
    pub message: String,
}
