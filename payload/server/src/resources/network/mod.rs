//! L2 networks (`NoVlan` on a physical interface, attached to clusters), L3 networks and the
//! flat network service provider; IP ranges, VIPs and the IP allocator are in [`addresses`].

mod addresses;

pub use addresses::{allocate_ip, dhcp_ip, ensure_dhcp_ip, UsedIp, IP_RANGE, VIP};

use addresses::{add_ip_range, create_vip, delete_ip_range, delete_vip, query_ip_range, query_vip};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use zstack_common::grammar::Grammar;

use crate::api::{count, exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::query::Table;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateL2NoVlanNetwork",
        description: "Create an L2 network on a physical interface of the hosts (a bridge \
                      br_<interface> on each host)",
        needs_session: true,
        params: &[
            req("name", "network name"),
            req("zoneUuid", "the zone"),
            req("physicalInterface", "the hosts' interface, e.g. eth0").is(Grammar::InterfaceName),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_l2),
    },
    ApiSpec {
        name: "AttachL2NetworkToCluster",
        description: "Make an L2 network usable by the hosts of a cluster",
        needs_session: true,
        params: &[
            req("l2NetworkUuid", "the L2 network"),
            req("clusterUuid", "the cluster"),
        ],
        handler: Handler::Sync(attach_l2),
    },
    ApiSpec {
        name: "DetachL2NetworkFromCluster",
        description: "Detach an L2 network from a cluster where no running VM uses it",
        needs_session: true,
        params: &[
            req("l2NetworkUuid", "the L2 network"),
            req("clusterUuid", "the cluster"),
        ],
        handler: Handler::Sync(detach_l2),
    },
    ApiSpec {
        name: "QueryL2Network",
        description: "L2 networks",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_l2),
    },
    ApiSpec {
        name: "DeleteL2Network",
        description: "Delete an L2 network without L3 networks",
        needs_session: true,
        params: &[req("uuid", "the L2 network")],
        handler: Handler::Sync(delete_l2),
    },
    ApiSpec {
        name: "CreateL3Network",
        description:
            "Create an L3 network on an L2 network; add IP ranges and network services next",
        needs_session: true,
        params: &[
            req("name", "network name"),
            req("l2NetworkUuid", "the L2 network"),
            opt("dnsDomain", "DNS domain handed out by DHCP").is(Grammar::DnsDomain),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_l3),
    },
    ApiSpec {
        name: "QueryL3Network",
        description: "L3 networks, with their IP ranges and network services",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_l3),
    },
    ApiSpec {
        name: "UpdateL3Network",
        description: "Rename an L3 network or change its description",
        needs_session: true,
        params: &[
            req("uuid", "the L3 network"),
            opt("name", "new name"),
            opt("description", "new description"),
        ],
        handler: Handler::Sync(update_l3),
    },
    ApiSpec {
        name: "DeleteL3Network",
        description: "Delete an L3 network no NIC or VIP uses (its ranges and services go with it)",
        needs_session: true,
        params: &[req("uuid", "the L3 network")],
        handler: Handler::Sync(delete_l3),
    },
    ApiSpec {
        name: "AddIpRange",
        description: "Add a range of addresses VMs and VIPs get on an L3 network",
        needs_session: true,
        params: &[
            req("l3NetworkUuid", "the L3 network"),
            req("name", "range name"),
            req("startIp", "first address").is(Grammar::Ipv4),
            req("endIp", "last address").is(Grammar::Ipv4),
            req("netmask", "e.g. 255.255.255.0").is(Grammar::Ipv4),
            req("gateway", "the gateway; never handed out").is(Grammar::Ipv4),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(add_ip_range),
    },
    ApiSpec {
        name: "QueryIpRange",
        description: "IP ranges",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_ip_range),
    },
    ApiSpec {
        name: "DeleteIpRange",
        description: "Delete an IP range from which no address is in use",
        needs_session: true,
        params: &[req("uuid", "the IP range")],
        handler: Handler::Sync(delete_ip_range),
    },
    ApiSpec {
        name: "QueryNetworkServiceProvider",
        description: "Network service providers and the services they offer (the Flat provider: \
                      DHCP, Userdata, Eip)",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_nsp),
    },
    ApiSpec {
        name: "AttachNetworkServiceToL3Network",
        description: "Enable network services on an L3 network: networkServices is \
                      {\"<provider uuid>\": [\"DHCP\", \"Userdata\", \"Eip\"]}",
        needs_session: true,
        params: &[
            req("l3NetworkUuid", "the L3 network"),
            req("networkServices", "{provider uuid: [service types]}"),
        ],
        handler: Handler::Sync(attach_services),
    },
    ApiSpec {
        name: "DetachNetworkServiceFromL3Network",
        description: "Disable network services on an L3 network (same form as attach)",
        needs_session: true,
        params: &[
            req("l3NetworkUuid", "the L3 network"),
            req("networkServices", "{provider uuid: [service types]}"),
        ],
        handler: Handler::Sync(detach_services),
    },
    ApiSpec {
        name: "CreateVip",
        description: "Reserve a virtual IP on an L3 network (the public side of an EIP)",
        needs_session: true,
        params: &[
            req("name", "VIP name"),
            req("l3NetworkUuid", "the L3 network to take the address from"),
            opt(
                "requiredIp",
                "this address, if free (default: any free one)",
            )
            .is(Grammar::Ipv4),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_vip),
    },
    ApiSpec {
        name: "QueryVip",
        description: "VIPs",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_vip),
    },
    ApiSpec {
        name: "DeleteVip",
        description: "Release a VIP no EIP uses",
        needs_session: true,
        params: &[req("uuid", "the VIP")],
        handler: Handler::Sync(delete_vip),
    },
];

pub const L2: Table = Table {
    resource: "L2Network",
    table: "l2_network",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("type", "type"),
        ("physicalInterface", "physical_interface"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_l2),
};

fn uuid_of(m: &Map<String, Value>) -> Option<String> {
    m.get("uuid").and_then(Value::as_str).map(str::to_string)
}

fn expand_l2(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    super::add_list(
        conn,
        m,
        "attachedClusterUuids",
        "SELECT cluster_uuid FROM cluster_l2_network WHERE l2_uuid = ?1 ORDER BY rowid",
    )
}

pub const L3: Table = Table {
    resource: "L3Network",
    table: "l3_network",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("type", "type"),
        ("zoneUuid", "zone_uuid"),
        ("l2NetworkUuid", "l2_uuid"),
        ("state", "state"),
        ("dnsDomain", "dns_domain"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_l3),
};

fn expand_l3(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(uuid) = uuid_of(m) else {
        return Ok(());
    };
    let ranges = crate::query::Query {
        conditions: vec![("l3NetworkUuid".into(), "=".into(), uuid.clone())],
        fields: None,
        limit: None,
        start: None,
    }
    .run(conn, &IP_RANGE)?;
    m.insert("ipRanges".into(), Value::from(ranges));
    let mut st = conn.prepare_cached(
        "SELECT provider_uuid, service_type FROM l3_network_service WHERE l3_uuid = ?1 ORDER BY rowid",
    )?;
    let services = st
        .query_map([&uuid], |r| {
            Ok(json!({"networkServiceProviderUuid": r.get::<_, String>(0)?, "networkServiceType": r.get::<_, String>(1)?}))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    m.insert("networkServices".into(), Value::from(services));
    Ok(())
}

pub const NSP: Table = Table {
    resource: "NetworkServiceProvider",
    table: "network_service_provider",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("type", "type"),
        ("description", "description"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_nsp),
};

fn expand_nsp(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    super::add_list(
        conn,
        m,
        "networkServiceTypes",
        "SELECT service_type FROM network_service_type WHERE provider_uuid = ?1 ORDER BY rowid",
    )
}

fn create_l2(c: &Call) -> Result<Value, ApiError> {
    let zone = c.required("zoneUuid")?;
    exists(c.conn, "zone", "Zone", zone, "zoneUuid")?;
    let iface = c.required("physicalInterface")?;
    // Linux interface names: at most 15 bytes, no '/', no whitespace; br_<iface> must fit too.
    if iface.len() > 12
        || iface
            .chars()
            .any(|ch| !(ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
    {
        return Err(ApiError::invalid(
            "physicalInterface",
            format!(
                "{iface:?} is not a usable interface name: at most 12 characters of letters, \
                 digits, - _ . (the bridge br_<interface> must fit Linux's 15)"
            ),
        ));
    }
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO l2_network (uuid, zone_uuid, name, description, type, physical_interface, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, 'L2NoVlanNetwork', ?5, ?6, ?6)",
        params![uuid, zone, c.required("name")?, c.str("description"), iface, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &L2, &uuid)?))
}

fn attach_l2(c: &Call) -> Result<Value, ApiError> {
    let l2 = c.required("l2NetworkUuid")?;
    let cluster = c.required("clusterUuid")?;
    let l2_zone: String = c
        .conn
        .query_row(
            "SELECT zone_uuid FROM l2_network WHERE uuid = ?1",
            [l2],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("L2Network", l2).field("l2NetworkUuid"))?;
    let cluster_zone: String = c
        .conn
        .query_row(
            "SELECT zone_uuid FROM cluster WHERE uuid = ?1",
            [cluster],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Cluster", cluster).field("clusterUuid"))?;
    if l2_zone != cluster_zone {
        return Err(ApiError::invalid(
            "clusterUuid",
            format!(
                "cluster {cluster} is in zone {cluster_zone}, L2 network {l2} in zone {l2_zone}"
            ),
        ));
    }
    super::change_attachment(
        c.conn,
        "INSERT OR IGNORE INTO cluster_l2_network (cluster_uuid, l2_uuid, create_date) VALUES (?1, ?2, ?3)",
        params![cluster, l2, auth::now()],
        "l2NetworkUuid",
        format!("L2 network {l2} is already attached to cluster {cluster}"),
    )?;
    Ok(inventory(one(c.conn, &L2, l2)?))
}

fn detach_l2(c: &Call) -> Result<Value, ApiError> {
    let l2 = c.required("l2NetworkUuid")?;
    let cluster = c.required("clusterUuid")?;
    exists(c.conn, "l2_network", "L2Network", l2, "l2NetworkUuid")?;
    super::refuse_while_running_vms_use(
        c.conn,
        "SELECT n.vm_uuid FROM vm_nic n JOIN l3_network l ON l.uuid = n.l3_uuid WHERE l.l2_uuid = ?1",
        l2,
        cluster,
        &format!("use L2 network {l2}"),
        "l2NetworkUuid",
    )?;
    super::change_attachment(
        c.conn,
        "DELETE FROM cluster_l2_network WHERE cluster_uuid = ?1 AND l2_uuid = ?2",
        params![cluster, l2],
        "clusterUuid",
        format!("L2 network {l2} is not attached to cluster {cluster}"),
    )?;
    Ok(inventory(one(c.conn, &L2, l2)?))
}

fn query_l2(c: &Call) -> Result<Value, ApiError> {
    c.query(&L2)
}

fn delete_l2(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "l2_network", "L2Network", uuid, "uuid")?;
    let l3s: i64 = count(
        c.conn,
        "SELECT count(*) FROM l3_network WHERE l2_uuid = ?1",
        [uuid],
    )?;
    if l3s > 0 {
        return Err(ApiError::in_use(format!(
            "L2 network {uuid} still has {l3s} L3 network(s); delete them first"
        ))
        .field("uuid"));
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute("DELETE FROM cluster_l2_network WHERE l2_uuid = ?1", [uuid])?;
    tx.execute("DELETE FROM l2_network WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}

fn create_l3(c: &Call) -> Result<Value, ApiError> {
    let l2 = c.required("l2NetworkUuid")?;
    let zone: String = c
        .conn
        .query_row(
            "SELECT zone_uuid FROM l2_network WHERE uuid = ?1",
            [l2],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("L2Network", l2).field("l2NetworkUuid"))?;
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO l3_network (uuid, l2_uuid, zone_uuid, name, description, dns_domain, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![uuid, l2, zone, c.required("name")?, c.str("description"), c.str("dnsDomain"), auth::now()],
    )?;
    Ok(inventory(one(c.conn, &L3, &uuid)?))
}

fn query_l3(c: &Call) -> Result<Value, ApiError> {
    c.query(&L3)
}

fn update_l3(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "l3_network", "L3Network", uuid, "uuid")?;
    c.conn.execute(
        "UPDATE l3_network SET name = coalesce(?2, name), description = coalesce(?3, description), last_op_date = ?4 WHERE uuid = ?1",
        params![uuid, c.str("name"), c.str("description"), auth::now()],
    )?;
    Ok(inventory(one(c.conn, &L3, uuid)?))
}

fn delete_l3(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "l3_network", "L3Network", uuid, "uuid")?;
    let used: i64 = count(
        c.conn,
        "SELECT count(*) FROM used_ip WHERE l3_uuid = ?1 AND owner_type <> 'DhcpServer'",
        [uuid],
    )?;
    let nics: i64 = count(
        c.conn,
        "SELECT count(*) FROM vm_nic WHERE l3_uuid = ?1",
        [uuid],
    )?;
    if used > 0 || nics > 0 {
        return Err(ApiError::in_use(format!(
            "L3 network {uuid} has {nics} VM NIC(s) and {used} address(es) in use; destroy the VMs and delete the VIPs first"
        ))
        .field("uuid"));
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM used_ip WHERE l3_uuid = ?1 AND owner_type = 'DhcpServer'",
        [uuid],
    )?;
    tx.execute("DELETE FROM l3_network_service WHERE l3_uuid = ?1", [uuid])?;
    tx.execute("DELETE FROM ip_range WHERE l3_uuid = ?1", [uuid])?;
    tx.execute("DELETE FROM l3_network WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}

fn query_nsp(c: &Call) -> Result<Value, ApiError> {
    c.query(&NSP)
}

/// `{provider uuid: [types]}`, given as an object or as its JSON text.
fn services(c: &Call) -> Result<Vec<(String, String)>, ApiError> {
    let v = match c.params.get("networkServices") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            ApiError::invalid(
                "networkServices",
                format!("networkServices must be a JSON object {{provider uuid: [types]}}: {e}"),
            )
        })?,
        Some(v) => v.clone(),
        None => return Err(ApiError::missing("networkServices")),
    };
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid(
            "networkServices",
            "networkServices must be an object {provider uuid: [types]}",
        )
    })?;
    let mut out = Vec::new();
    for (provider, types) in obj {
        let offered = super::strings(
            c.conn,
            "SELECT service_type FROM network_service_type WHERE provider_uuid = ?1",
            provider,
        )?;
        if offered.is_empty() {
            return Err(
                ApiError::not_found("NetworkServiceProvider", provider).field("networkServices")
            );
        }
        let types = types.as_array().ok_or_else(|| {
            ApiError::invalid(
                "networkServices",
                "each provider maps to a list of service types",
            )
        })?;
        for t in types {
            let t = t.as_str().unwrap_or_default();
            if !offered.iter().any(|o| o == t) {
                return Err(ApiError::invalid(
                    "networkServices",
                    format!(
                        "provider {provider} offers no service {t:?}; it offers: {}",
                        offered.join(", ")
                    ),
                ));
            }
            out.push((provider.clone(), t.to_string()));
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid("networkServices", "no service given"));
    }
    Ok(out)
}

fn attach_services(c: &Call) -> Result<Value, ApiError> {
    let l3 = c.required("l3NetworkUuid")?;
    exists(c.conn, "l3_network", "L3Network", l3, "l3NetworkUuid")?;
    let list = services(c)?;
    let tx = c.conn.unchecked_transaction()?;
    for (provider, t) in &list {
        tx.execute(
            "INSERT INTO l3_network_service (l3_uuid, provider_uuid, service_type) VALUES (?1, ?2, ?3)
             ON CONFLICT (l3_uuid, service_type) DO UPDATE SET provider_uuid = excluded.provider_uuid",
            params![l3, provider, t],
        )?;
    }
    tx.commit()?;
    Ok(inventory(one(c.conn, &L3, l3)?))
}

fn detach_services(c: &Call) -> Result<Value, ApiError> {
    let l3 = c.required("l3NetworkUuid")?;
    exists(c.conn, "l3_network", "L3Network", l3, "l3NetworkUuid")?;
    let list = services(c)?;
    if list.iter().any(|(_, t)| t == "Eip") {
        let eips: i64 = count(c.conn, "SELECT count(*) FROM eip e JOIN vm_nic n ON n.uuid = e.vm_nic_uuid WHERE n.l3_uuid = ?1", [l3])?;
        if eips > 0 {
            return Err(ApiError::in_use(format!(
                "{eips} EIP(s) are attached to NICs of L3 network {l3}; detach them first"
            ))
            .field("networkServices"));
        }
    }
    let tx = c.conn.unchecked_transaction()?;
    for (provider, t) in &list {
        tx.execute(
            "DELETE FROM l3_network_service WHERE l3_uuid = ?1 AND provider_uuid = ?2 AND service_type = ?3",
            params![l3, provider, t],
        )?;
    }
    tx.commit()?;
    Ok(inventory(one(c.conn, &L3, l3)?))
}

/// The services enabled on an L3 network.
pub fn l3_services(conn: &Connection, l3: &str) -> Result<Vec<String>, ApiError> {
    super::strings(
        conn,
        "SELECT service_type FROM l3_network_service WHERE l3_uuid = ?1 ORDER BY rowid",
        l3,
    )
}
