//! Instance offerings, VMs and volumes: the VM lifecycle (create, start, stop, reboot, destroy)
//! and data volumes (create, attach, detach, delete), driven through the host's
//! [`crate::agent::HostAgent`].
//!
//! Every lifecycle call reserves synchronously, under the DB lock and in one transaction: the
//! host (free CPU and memory, in a cluster attached to the VM's L2 networks and primary storage),
//! the primary storage (most free capacity), the IPs. The job then asks the host and records the
//! outcome; a host that refuses gives everything back.
//!
//! Split by concern: `offering.rs` instance offerings, `placement.rs` choosing a host and
//! primary storage, `spec.rs` what the agent is sent about a VM, `lifecycle.rs` the VM calls,
//! `volume.rs` data volumes, `console.rs` a VM's serial console log.

mod console;
mod lifecycle;
mod offering;
mod placement;
mod spec;
mod volume;

use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};

use zstack_common::grammar::Grammar;

use crate::api::{opt, req, ApiSpec, Handler, QUERY_PARAMS};
use crate::error::ApiError;
use crate::query::{Query, Table};

pub use lifecycle::reset_interrupted;
pub use spec::{eip_specs_of_vm, nic_specs, vm_spec};

use console::get_console_log;
use lifecycle::{create_vm, destroy_vm, query_vm, reboot_vm, start_vm, stop_vm, update_vm};
use offering::{create_offering, delete_offering, query_offering};
use volume::{attach_volume, create_volume, delete_volume, detach_volume, query_volume};

/// cloud-init user data is small; this bounds what a VM's metadata server serves.
const MAX_USER_DATA: usize = 64 * 1024;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateInstanceOffering",
        description: "Create an instance offering: the CPUs and memory of VMs made from it",
        needs_session: true,
        params: &[
            req("name", "offering name"),
            req("cpuNum", "CPUs"),
            req("memorySize", "memory, bytes or with a unit (512M, 2G)"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_offering),
    },
    ApiSpec {
        name: "QueryInstanceOffering",
        description: "Instance offerings",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_offering),
    },
    ApiSpec {
        name: "DeleteInstanceOffering",
        description: "Delete an instance offering (VMs made from it keep their size)",
        needs_session: true,
        params: &[req("uuid", "the offering")],
        handler: Handler::Sync(delete_offering),
    },
    ApiSpec {
        name: "CreateVmInstance",
        description: "Create and start a VM: a host with room is chosen in a cluster attached to \
                      its networks and to primary storage with room; each NIC gets a free IP",
        needs_session: true,
        params: &[
            req("name", "VM name").is(Grammar::Line),
            req("instanceOfferingUuid", "CPUs and memory"),
            req("imageUuid", "a Ready RootVolumeTemplate image"),
            req("l3NetworkUuids", "the L3 networks of its NICs, in order"),
            opt("defaultL3NetworkUuid", "the NIC with the default route (default: the first)"),
            opt("clusterUuid", "only hosts of this cluster"),
            opt("hostUuid", "only this host"),
            opt("userData", "cloud-init user data served by the metadata server (at most 64 KiB)"),
            opt(
                "rootPassword",
                "root's password, set by cloud-init when there is no userData (kept only as a SHA-512 crypt hash)",
            ),
            opt(
                "sshKey",
                "an SSH public key: served as public-keys/0/openssh-key, and as a #cloud-config when there is no userData",
            )
            .is(Grammar::SshPublicKey),
            opt("description", "free text"),
        ],
        handler: Handler::Async(create_vm),
    },
    ApiSpec {
        name: "QueryVmInstance",
        description: "VMs, with their NICs and volumes",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_vm),
    },
    ApiSpec {
        name: "GetVmConsoleLog",
        description: "A VM's serial console log from a byte offset, at most 64 KiB per answer, \
                      with nextOffset and the log's size: ask again from nextOffset to follow it \
                      (restarted: the log was truncated or rotated, this piece starts at 0)",
        needs_session: true,
        params: &[
            req("uuid", "the VM"),
            opt("offset", "the byte to start from (default 0)"),
        ],
        handler: Handler::Read(get_console_log),
    },
    ApiSpec {
        name: "UpdateVmInstance",
        description: "Rename a VM, change its description or its user data (served from its next start)",
        needs_session: true,
        params: &[
            req("uuid", "the VM"),
            opt("name", "new name").is(Grammar::Line),
            opt("description", "new description"),
            opt("userData", "new user data"),
        ],
        handler: Handler::Sync(update_vm),
    },
    ApiSpec {
        name: "StartVmInstance",
        description: "Start a stopped VM (on its last host when that host has room)",
        needs_session: true,
        params: &[req("uuid", "the VM"), opt("hostUuid", "start it on this host")],
        handler: Handler::Async(start_vm),
    },
    ApiSpec {
        name: "StopVmInstance",
        params: &[
            req("uuid", "the VM"),
            opt(
                "type",
                "grace (default: ACPI shutdown, forced after kvm/vm.gracefulStopTimeout seconds) or cold (at once)",
            ),
        ],
        description: "Stop a running VM; its host's CPU and memory are freed",
        needs_session: true,
        handler: Handler::Async(stop_vm),
    },
    ApiSpec {
        name: "RebootVmInstance",
        description: "Reboot a running VM",
        needs_session: true,
        params: &[req("uuid", "the VM")],
        handler: Handler::Async(reboot_vm),
    },
    ApiSpec {
        name: "DestroyVmInstance",
        description: "Destroy a VM: stop it, delete its root volume, free its IPs; its data volumes \
                      are detached and kept, its EIPs detached and kept",
        needs_session: true,
        params: &[req("uuid", "the VM")],
        handler: Handler::Async(destroy_vm),
    },
    ApiSpec {
        name: "CreateDataVolume",
        description: "Create a data volume; it is made on the primary storage of the VM it is first attached to",
        needs_session: true,
        params: &[
            req("name", "volume name"),
            req("diskSize", "bytes or with a unit (10G)"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_volume),
    },
    ApiSpec {
        name: "AttachDataVolumeToVm",
        description: "Attach a data volume to a running or stopped VM (a running VM gets it at \
                      once, with the kvm/vm.cacheMode of that moment)",
        needs_session: true,
        params: &[req("volumeUuid", "the volume"), req("vmInstanceUuid", "the VM")],
        handler: Handler::Async(attach_volume),
    },
    ApiSpec {
        name: "DetachDataVolumeFromVm",
        description: "Detach a data volume from its VM; the volume is kept",
        needs_session: true,
        params: &[req("uuid", "the volume")],
        handler: Handler::Async(detach_volume),
    },
    ApiSpec {
        name: "QueryVolume",
        description: "Volumes (root and data)",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_volume),
    },
    ApiSpec {
        name: "DeleteDataVolume",
        description: "Delete a detached data volume and its file",
        needs_session: true,
        params: &[req("uuid", "the volume")],
        handler: Handler::Async(delete_volume),
    },
];

pub const OFFERING: Table = Table {
    resource: "InstanceOffering",
    table: "instance_offering",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("cpuNum", "cpu_num"),
        ("memorySize", "memory_size"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

pub const VM: Table = Table {
    resource: "VmInstance",
    table: "vm_instance",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("clusterUuid", "cluster_uuid"),
        ("hostUuid", "host_uuid"),
        ("lastHostUuid", "last_host_uuid"),
        ("imageUuid", "image_uuid"),
        ("instanceOfferingUuid", "instance_offering_uuid"),
        ("rootVolumeUuid", "root_volume_uuid"),
        ("defaultL3NetworkUuid", "default_l3_uuid"),
        ("hypervisorType", "hypervisor_type"),
        ("cpuNum", "cpu_num"),
        ("memorySize", "memory_size"),
        ("state", "state"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_vm),
};

pub const NIC: Table = Table {
    resource: "VmNic",
    table: "vm_nic",
    fields: &[
        ("uuid", "uuid"),
        ("vmInstanceUuid", "vm_uuid"),
        ("l3NetworkUuid", "l3_uuid"),
        ("ip", "ip"),
        ("mac", "mac"),
        ("netmask", "netmask"),
        ("gateway", "gateway"),
        ("deviceId", "device_id"),
        ("usedIpUuid", "used_ip_uuid"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

pub const VOLUME: Table = Table {
    resource: "Volume",
    table: "volume",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("vmInstanceUuid", "vm_uuid"),
        ("primaryStorageUuid", "primary_storage_uuid"),
        ("type", "type"),
        ("format", "format"),
        ("size", "size"),
        ("deviceId", "device_id"),
        ("installPath", "install_path"),
        ("cacheMode", "cache_mode"),
        ("state", "state"),
        ("status", "status"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

fn by(field: &str, value: &str) -> Query {
    Query {
        conditions: vec![(field.into(), "=".into(), value.into())],
        fields: None,
        limit: None,
        start: None,
    }
}

fn expand_vm(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(uuid) = m.get("uuid").and_then(Value::as_str).map(str::to_string) {
        m.insert(
            "vmNics".into(),
            Value::from(by("vmInstanceUuid", &uuid).run(conn, &NIC)?),
        );
        m.insert(
            "allVolumes".into(),
            Value::from(by("vmInstanceUuid", &uuid).run(conn, &VOLUME)?),
        );
    }
    Ok(())
}

/// The account of the calling session (volumes live under `acct-<account>`).
fn session_account(conn: &Connection, session: Option<&str>) -> Result<String, ApiError> {
    let account: Option<String> = match session {
        Some(s) => conn
            .query_row(
                "SELECT account_uuid FROM session WHERE uuid = ?1",
                [s],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    account.ok_or_else(|| ApiError::unauthorized("the session is not valid"))
}
