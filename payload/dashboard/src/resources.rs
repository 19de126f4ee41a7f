//! The API's resources as the dashboard shows them: the query call of each, the columns of its
//! list, the calls that create one, the calls on one (with the parameter that names it), and the
//! resources that point at it.

use serde_json::{json, Value};

pub struct Kind {
    /// The path segment: `/r/<slug>`.
    pub slug: &'static str,
    pub title: &'static str,
    pub query: &'static str,
    /// Columns of the list (the first is the link to the detail view).
    pub columns: &'static [&'static str],
    /// Calls that make one.
    pub creates: &'static [&'static str],
    /// Calls on one resource: (call, the parameter given this resource's uuid).
    pub actions: &'static [(&'static str, &'static str)],
    /// Resources that point at this one: (kind slug, their field holding this uuid).
    pub children: &'static [(&'static str, &'static str)],
}

pub const KINDS: &[Kind] = &[
    Kind {
        slug: "zones",
        title: "Zones",
        query: "QueryZone",
        columns: &["name", "state", "description", "createDate"],
        creates: &["CreateZone"],
        actions: &[
            ("UpdateZone", "uuid"),
            ("AttachBackupStorageToZone", "zoneUuid"),
            ("DetachBackupStorageFromZone", "zoneUuid"),
            ("DeleteZone", "uuid"),
        ],
        children: &[
            ("clusters", "zoneUuid"),
            ("hosts", "zoneUuid"),
            ("primary-storage", "zoneUuid"),
            ("l2-networks", "zoneUuid"),
            ("l3-networks", "zoneUuid"),
        ],
    },
    Kind {
        slug: "clusters",
        title: "Clusters",
        query: "QueryCluster",
        columns: &["name", "hypervisorType", "state", "zoneUuid", "createDate"],
        creates: &["CreateCluster"],
        actions: &[
            ("UpdateCluster", "uuid"),
            ("AttachPrimaryStorageToCluster", "clusterUuid"),
            ("DetachPrimaryStorageFromCluster", "clusterUuid"),
            ("AttachL2NetworkToCluster", "clusterUuid"),
            ("DetachL2NetworkFromCluster", "clusterUuid"),
            ("AddKVMHost", "clusterUuid"),
            ("AddSimulatorHost", "clusterUuid"),
            ("DeleteCluster", "uuid"),
        ],
        children: &[("hosts", "clusterUuid"), ("vms", "clusterUuid")],
    },
    Kind {
        slug: "hosts",
        title: "Hosts",
        query: "QueryHost",
        columns: &[
            "name",
            "managementIp",
            "hypervisorType",
            "state",
            "status",
            "availableCpuCapacity",
            "availableMemoryCapacity",
            "clusterUuid",
        ],
        creates: &["AddKVMHost", "AddSimulatorHost"],
        actions: &[
            ("UpdateHost", "uuid"),
            ("ChangeHostState", "uuid"),
            ("ReconnectHost", "uuid"),
            ("DeleteHost", "uuid"),
        ],
        children: &[("vms", "hostUuid")],
    },
    Kind {
        slug: "primary-storage",
        title: "Primary storage",
        query: "QueryPrimaryStorage",
        columns: &[
            "name",
            "type",
            "url",
            "status",
            "totalCapacity",
            "availableCapacity",
            "zoneUuid",
        ],
        creates: &["AddSharedMountPointPrimaryStorage"],
        actions: &[
            ("AttachPrimaryStorageToCluster", "primaryStorageUuid"),
            ("DetachPrimaryStorageFromCluster", "primaryStorageUuid"),
            ("DeletePrimaryStorage", "uuid"),
        ],
        children: &[("volumes", "primaryStorageUuid")],
    },
    Kind {
        slug: "backup-storage",
        title: "Backup storage",
        query: "QueryBackupStorage",
        columns: &[
            "name",
            "type",
            "url",
            "status",
            "totalCapacity",
            "availableCapacity",
        ],
        creates: &["AddLocalBackupStorage"],
        actions: &[
            ("AttachBackupStorageToZone", "backupStorageUuid"),
            ("DetachBackupStorageFromZone", "backupStorageUuid"),
            ("AddImage", "backupStorageUuids"),
            ("DeleteBackupStorage", "uuid"),
        ],
        children: &[("images", "backupStorageUuid")],
    },
    Kind {
        slug: "images",
        title: "Images",
        query: "QueryImage",
        columns: &["name", "format", "mediaType", "status", "size", "platform"],
        creates: &["AddImage"],
        actions: &[("DeleteImage", "uuid")],
        children: &[("vms", "imageUuid")],
    },
    Kind {
        slug: "l2-networks",
        title: "L2 networks",
        query: "QueryL2Network",
        columns: &["name", "type", "physicalInterface", "zoneUuid"],
        creates: &["CreateL2NoVlanNetwork"],
        actions: &[
            ("AttachL2NetworkToCluster", "l2NetworkUuid"),
            ("DetachL2NetworkFromCluster", "l2NetworkUuid"),
            ("DeleteL2Network", "uuid"),
        ],
        children: &[("l3-networks", "l2NetworkUuid")],
    },
    Kind {
        slug: "l3-networks",
        title: "L3 networks",
        query: "QueryL3Network",
        columns: &["name", "state", "dnsDomain", "l2NetworkUuid"],
        creates: &["CreateL3Network"],
        actions: &[
            ("UpdateL3Network", "uuid"),
            ("AddIpRange", "l3NetworkUuid"),
            ("AttachNetworkServiceToL3Network", "l3NetworkUuid"),
            ("DetachNetworkServiceFromL3Network", "l3NetworkUuid"),
            ("CreateVip", "l3NetworkUuid"),
            ("DeleteL3Network", "uuid"),
        ],
        children: &[("ip-ranges", "l3NetworkUuid"), ("vips", "l3NetworkUuid")],
    },
    Kind {
        slug: "ip-ranges",
        title: "IP ranges",
        query: "QueryIpRange",
        columns: &[
            "name",
            "startIp",
            "endIp",
            "netmask",
            "gateway",
            "l3NetworkUuid",
        ],
        creates: &["AddIpRange"],
        actions: &[("DeleteIpRange", "uuid")],
        children: &[],
    },
    Kind {
        slug: "network-service-providers",
        title: "Network service providers",
        query: "QueryNetworkServiceProvider",
        columns: &["name", "type", "description"],
        creates: &[],
        actions: &[],
        children: &[],
    },
    Kind {
        slug: "vips",
        title: "VIPs",
        query: "QueryVip",
        columns: &["name", "ip", "state", "l3NetworkUuid"],
        creates: &["CreateVip"],
        actions: &[("CreateEip", "vipUuid"), ("DeleteVip", "uuid")],
        children: &[("eips", "vipUuid")],
    },
    Kind {
        slug: "eips",
        title: "EIPs",
        query: "QueryEip",
        columns: &["name", "state", "guestIp", "vipUuid", "vmNicUuid"],
        creates: &["CreateEip"],
        actions: &[
            ("AttachEip", "eipUuid"),
            ("DetachEip", "uuid"),
            ("DeleteEip", "uuid"),
        ],
        children: &[],
    },
    Kind {
        slug: "instance-offerings",
        title: "Instance offerings",
        query: "QueryInstanceOffering",
        columns: &["name", "cpuNum", "memorySize", "description"],
        creates: &["CreateInstanceOffering"],
        actions: &[("DeleteInstanceOffering", "uuid")],
        children: &[("vms", "instanceOfferingUuid")],
    },
    Kind {
        slug: "vms",
        title: "VMs",
        query: "QueryVmInstance",
        columns: &[
            "name",
            "state",
            "cpuNum",
            "memorySize",
            "hostUuid",
            "createDate",
        ],
        creates: &["CreateVmInstance"],
        actions: &[
            ("StartVmInstance", "uuid"),
            ("StopVmInstance", "uuid"),
            ("RebootVmInstance", "uuid"),
            ("UpdateVmInstance", "uuid"),
            ("AttachDataVolumeToVm", "vmInstanceUuid"),
            ("DestroyVmInstance", "uuid"),
        ],
        children: &[("volumes", "vmInstanceUuid")],
    },
    Kind {
        slug: "volumes",
        title: "Volumes",
        query: "QueryVolume",
        columns: &["name", "type", "state", "status", "size", "vmInstanceUuid"],
        creates: &["CreateDataVolume"],
        actions: &[
            ("AttachDataVolumeToVm", "volumeUuid"),
            ("DetachDataVolumeFromVm", "uuid"),
            ("DeleteDataVolume", "uuid"),
        ],
        children: &[],
    },
];

pub fn kind(slug: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.slug == slug)
}

/// The kind a `<x>Uuid` or `<x>Uuids` field or parameter points at.
pub fn kind_of_field(field: &str) -> Option<&'static Kind> {
    let base = field
        .strip_suffix("Uuids")
        .or_else(|| field.strip_suffix("Uuid"))?;
    let slug = match base {
        "zone" | "attachedZone" => "zones",
        "cluster" | "attachedCluster" => "clusters",
        "host" | "lastHost" => "hosts",
        "primaryStorage" | "attachedPrimaryStorage" => "primary-storage",
        "backupStorage" => "backup-storage",
        "image" => "images",
        "l2Network" | "attachedL2Network" => "l2-networks",
        "l3Network" | "defaultL3Network" => "l3-networks",
        "vip" => "vips",
        "eip" => "eips",
        "instanceOffering" => "instance-offerings",
        "vmInstance" => "vms",
        "volume" | "rootVolume" => "volumes",
        _ => return None,
    };
    kind(slug)
}

/// The kind whose `creates` has `api`.
pub fn kind_created_by(api: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.creates.contains(&api))
}

/// The navigation: overview, every kind, jobs, global configuration, wizards.
pub fn nav() -> Value {
    let mut items = vec![json!({"href": "/", "title": "Overview"})];
    items.extend(
        KINDS
            .iter()
            .map(|k| json!({"href": format!("/r/{}", k.slug), "title": k.title})),
    );
    items.push(json!({"href": "/jobs", "title": "Jobs"}));
    items.push(json!({"href": "/config", "title": "Global configuration"}));
    Value::Array(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_link_and_child_names_a_kind() {
        for k in KINDS {
            for (slug, _) in k.children {
                assert!(kind(slug).is_some(), "{}: child {slug}", k.slug);
            }
            for (_, p) in k.actions {
                assert!(
                    *p == "uuid" || kind_of_field(p).map(|x| x.slug) == Some(k.slug),
                    "{}: action parameter {p}",
                    k.slug
                );
            }
        }
        assert_eq!(kind_of_field("lastHostUuid").map(|k| k.slug), Some("hosts"));
        assert_eq!(
            kind_of_field("backupStorageUuids").map(|k| k.slug),
            Some("backup-storage")
        );
        assert!(kind_of_field("name").is_none());
    }
}
