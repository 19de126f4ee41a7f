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
    pub const VM_CONSOLE_LOG: &str = "/vm/console-log";
}

/// The most bytes of a console log one answer of [`path::VM_CONSOLE_LOG`] carries.
pub const CONSOLE_LOG_MAX_BYTES: u64 = 64 * 1024;

/// Asks for a VM's serial console log from byte `offset` on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleLogRequest {
    pub uuid: String,
    #[serde(default)]
    pub offset: u64,
}

/// A piece of a VM's console log: at most [`CONSOLE_LOG_MAX_BYTES`] from `offset`. A client
/// follows the log by asking again from `next_offset`; `next_offset == size` means it has all
/// there is for now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleLog {
    /// The bytes from `offset` to `next_offset` as text (bytes that are not UTF-8 shown as
    /// U+FFFD; a character cut by the bound is left for the next piece).
    pub text: String,
    /// Where `text` starts: the offset asked, or 0 when `restarted`.
    pub offset: u64,
    pub next_offset: u64,
    /// The log's size now, bytes.
    pub size: u64,
    /// The log is shorter than the offset asked (it was truncated or rotated): this piece
    /// starts again at 0.
    pub restarted: bool,
    /// Who wrote the log, when it is not the VM's own serial console (a simulator host).
    #[serde(default)]
    pub source: Option<String>,
}

impl ConsoleLog {
    /// The piece starting at `start` of a log of `size` bytes, given the log's bytes from
    /// `start` on (`from_start`, which may be longer than the bound).
    pub fn piece(from_start: &[u8], start: u64, size: u64) -> ConsoleLog {
        let limit = usize::try_from(CONSOLE_LOG_MAX_BYTES).unwrap_or(usize::MAX);
        let mut bytes = &from_start[..from_start.len().min(limit)];
        // A multi-byte character cut at the end waits for the next piece (unless it is all
        // there is, so a client always moves on).
        if let Err(e) = std::str::from_utf8(bytes) {
            if e.error_len().is_none() && e.valid_up_to() > 0 {
                bytes = &bytes[..e.valid_up_to()];
            }
        }
        ConsoleLog {
            text: String::from_utf8_lossy(bytes).into_owned(),
            offset: start,
            next_offset: start + bytes.len() as u64,
            size,
            restarted: false,
            source: None,
        }
    }

    /// Where to read from for a request from `offset` on a log of `size` bytes, and whether
    /// that restarts the log (it is shorter than the offset: truncated or rotated).
    pub fn start_of(offset: u64, size: u64) -> (u64, bool) {
        if offset > size {
            (0, true)
        } else {
            (offset, false)
        }
    }

    /// The answer for a request from `offset` on a log held whole in memory.
    pub fn of_bytes(log: &[u8], offset: u64) -> ConsoleLog {
        let size = log.len() as u64;
        let (start, restarted) = ConsoleLog::start_of(offset, size);
        let from = usize::try_from(start).unwrap_or(log.len()).min(log.len());
        ConsoleLog {
            restarted,
            ..ConsoleLog::piece(&log[from..], start, size)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_log_is_answered_in_bounded_pieces_from_the_offset() {
        let log = vec![b'x'; 150 * 1024];
        let first = ConsoleLog::of_bytes(&log, 0);
        assert_eq!(first.text.len() as u64, CONSOLE_LOG_MAX_BYTES);
        assert_eq!(
            (first.offset, first.next_offset, first.size),
            (0, CONSOLE_LOG_MAX_BYTES, 150 * 1024)
        );
        let mut offset = first.next_offset;
        let mut pieces = 1;
        while offset < log.len() as u64 {
            let p = ConsoleLog::of_bytes(&log, offset);
            assert!(!p.restarted);
            assert_eq!(p.offset, offset);
            offset = p.next_offset;
            pieces += 1;
        }
        assert_eq!((offset, pieces), (150 * 1024, 3));
        let end = ConsoleLog::of_bytes(&log, offset);
        assert_eq!((end.text.as_str(), end.next_offset), ("", offset));
    }

    #[test]
    fn an_offset_past_the_end_restarts_at_zero() {
        let p = ConsoleLog::of_bytes(b"after rotation\n", 5000);
        assert!(p.restarted);
        assert_eq!((p.offset, p.next_offset, p.size), (0, 15, 15));
        assert_eq!(p.text, "after rotation\n");
    }

    #[test]
    fn a_character_cut_by_the_bound_waits_for_the_next_piece() {
        let mut log = vec![b'a'; CONSOLE_LOG_MAX_BYTES as usize - 1];
        log.extend("é and more".as_bytes());
        let first = ConsoleLog::of_bytes(&log, 0);
        assert_eq!(first.next_offset, CONSOLE_LOG_MAX_BYTES - 1);
        assert!(!first.text.contains('\u{fffd}'));
        let second = ConsoleLog::of_bytes(&log, first.next_offset);
        assert_eq!(second.text, "é and more");
        // Bytes that are not UTF-8 are shown, not dropped, and the offset moves on.
        let bad = ConsoleLog::of_bytes(b"a\xffb", 0);
        assert_eq!((bad.text.as_str(), bad.next_offset), ("a\u{fffd}b", 3));
    }
}
