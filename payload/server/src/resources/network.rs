//! L2 networks (`NoVlan` on a physical interface, attached to clusters), L3 networks with IP
//! ranges, the flat network service provider, VIPs, and the IP allocator.
//!
//! IP allocation never hands one address out twice: every allocation runs inside the caller's
//! transaction under the management node's single DB lock, probes for a free address from a
//! random point of the range (so a nearly empty range costs one probe), and the `used_ip` table's
//! unique key on (L3, address) stands behind it.

use std::net::Ipv4Addr;

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

pub const IP_RANGE: Table = Table {
    resource: "IpRange",
    table: "ip_range",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("l3NetworkUuid", "l3_uuid"),
        ("startIp", "start_ip"),
        ("endIp", "end_ip"),
        ("netmask", "netmask"),
        ("gateway", "gateway"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

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

pub const VIP: Table = Table {
    resource: "Vip",
    table: "vip",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("l3NetworkUuid", "l3_uuid"),
        ("ip", "ip"),
        ("state", "state"),
        ("usedIpUuid", "used_ip_uuid"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_vip),
};

fn expand_vip(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(uuid) = uuid_of(m) {
        let eip: Option<String> = conn
            .query_row("SELECT uuid FROM eip WHERE vip_uuid = ?1", [&uuid], |r| {
                r.get(0)
            })
            .optional()?;
        m.insert("useFor".into(), Value::from(eip.map(|_| "Eip")));
        if let Some(l3) = m
            .get("l3NetworkUuid")
            .and_then(Value::as_str)
            .map(str::to_string)
        {
            let r: Option<(String, String)> = conn
                .query_row(
                    "SELECT r.netmask, r.gateway FROM ip_range r JOIN used_ip u ON u.ip_range_uuid = r.uuid
                      WHERE u.owner_uuid = ?1 AND u.l3_uuid = ?2",
                    params![uuid, l3],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((mask, gw)) = r {
                m.insert("netmask".into(), Value::from(mask));
                m.insert("gateway".into(), Value::from(gw));
            }
        }
    }
    Ok(())
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

fn ip(c: &Call, k: &str) -> Result<Ipv4Addr, ApiError> {
    let v = c.required(k)?;
    v.parse::<Ipv4Addr>()
        .map_err(|_| ApiError::invalid(k, format!("{k} {v:?} is not an IPv4 address")))
}

fn add_ip_range(c: &Call) -> Result<Value, ApiError> {
    let l3 = c.required("l3NetworkUuid")?;
    exists(c.conn, "l3_network", "L3Network", l3, "l3NetworkUuid")?;
    let (start, end, mask, gw) = (
        ip(c, "startIp")?,
        ip(c, "endIp")?,
        ip(c, "netmask")?,
        ip(c, "gateway")?,
    );
    let m = u32::from(mask);
    if m.leading_ones() + m.trailing_zeros() != 32 || m.leading_ones() < 8 || m.leading_ones() > 30
    {
        return Err(ApiError::invalid(
            "netmask",
            format!("{mask} is not a netmask between /8 and /30"),
        ));
    }
    let (s, e, g) = (u32::from(start), u32::from(end), u32::from(gw));
    if s > e {
        return Err(ApiError::invalid(
            "endIp",
            format!("endIp {end} is before startIp {start}"),
        ));
    }
    let net = g & m;
    for (k, v) in [("startIp", s), ("endIp", e)] {
        if v & m != net {
            return Err(ApiError::invalid(
                k,
                format!(
                    "{k} {} is not in the gateway's network {}/{}",
                    Ipv4Addr::from(v),
                    Ipv4Addr::from(net),
                    m.leading_ones()
                ),
            ));
        }
        if v == net || v == net | !m {
            return Err(ApiError::invalid(
                k,
                format!(
                    "{k} {} is the network or broadcast address",
                    Ipv4Addr::from(v)
                ),
            ));
        }
    }
    // Ranges of one L3 never overlap, or one address could be handed out from two of them.
    let mut st = c
        .conn
        .prepare("SELECT uuid, start_ip, end_ip FROM ip_range WHERE l3_uuid = ?1")?;
    let others = st
        .query_map([l3], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (other, os, oe) in others {
        let (os, oe) = (to_int(&os)?, to_int(&oe)?);
        if s <= oe && os <= e {
            return Err(ApiError::invalid(
                "startIp",
                format!("{start}-{end} overlaps IP range {other} of this L3 network"),
            ));
        }
    }
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO ip_range (uuid, l3_uuid, name, description, start_ip, end_ip, netmask, gateway, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![uuid, l3, c.required("name")?, c.str("description"), start.to_string(), end.to_string(), mask.to_string(), gw.to_string(), auth::now()],
    )?;
    Ok(inventory(one(c.conn, &IP_RANGE, &uuid)?))
}

fn to_int(s: &str) -> Result<u32, ApiError> {
    s.parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| ApiError::internal(format!("a stored address {s:?} is not IPv4")))
}

fn query_ip_range(c: &Call) -> Result<Value, ApiError> {
    c.query(&IP_RANGE)
}

fn delete_ip_range(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "ip_range", "IpRange", uuid, "uuid")?;
    let used: i64 = count(
        c.conn,
        "SELECT count(*) FROM used_ip WHERE ip_range_uuid = ?1 AND owner_type <> 'DhcpServer'",
        [uuid],
    )?;
    if used > 0 {
        return Err(ApiError::in_use(format!(
            "{used} address(es) of IP range {uuid} are in use; destroy their VMs and VIPs first"
        ))
        .field("uuid"));
    }
    c.conn
        .execute("DELETE FROM ip_range WHERE uuid = ?1", [uuid])?;
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

/// The address of the L3's DHCP server (its namespace on each host), taken from its ranges the
/// first time a VM needs it when the L3 has DHCP or Userdata. Inside the caller's transaction.
pub fn ensure_dhcp_ip(conn: &Connection, l3: &str) -> Result<Option<String>, ApiError> {
    let services = l3_services(conn, l3)?;
    if !services.iter().any(|s| s == "DHCP" || s == "Userdata") {
        return Ok(None);
    }
    if let Some(ip) = dhcp_ip(conn, l3)? {
        return Ok(Some(ip));
    }
    Ok(Some(allocate_ip(conn, l3, "DhcpServer", l3, None)?.ip))
}

pub fn dhcp_ip(conn: &Connection, l3: &str) -> Result<Option<String>, ApiError> {
    Ok(conn
        .prepare_cached(
            "SELECT ip FROM used_ip WHERE l3_uuid = ?1 AND owner_type = 'DhcpServer' AND owner_uuid = ?1",
        )?
        .query_row([l3], |r| r.get(0))
        .optional()?)
}

/// An address handed out.
#[derive(Debug, Clone)]
pub struct UsedIp {
    pub uuid: String,
    pub ip: String,
    pub netmask: String,
    pub gateway: String,
}

/// Takes a free address of `l3` (or exactly `wanted`) for `owner`. Must run inside the caller's
/// transaction, under the DB lock.
pub fn allocate_ip(
    conn: &Connection,
    l3: &str,
    owner_type: &str,
    owner: &str,
    wanted: Option<Ipv4Addr>,
) -> Result<UsedIp, ApiError> {
    let ranges: Vec<(String, u32, u32, String, String)> = {
        let mut st = conn.prepare_cached(
            "SELECT uuid, start_ip, end_ip, netmask, gateway FROM ip_range WHERE l3_uuid = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map([l3], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (u, s, e, m, g) = row?;
            out.push((u, to_int(&s)?, to_int(&e)?, m, g));
        }
        out
    };
    if ranges.is_empty() {
        return Err(ApiError::no_capacity(format!(
            "L3 network {l3} has no IP range; add one with AddIpRange"
        ))
        .field("l3NetworkUuid"));
    }
    let is_used = |v: u32| -> Result<bool, ApiError> {
        let mut st =
            conn.prepare_cached("SELECT 1 FROM used_ip WHERE l3_uuid = ?1 AND ip_int = ?2")?;
        Ok(st.exists(params![l3, v as i64])?)
    };
    let mut pick = None;
    if let Some(w) = wanted {
        let v = u32::from(w);
        let range = ranges
            .iter()
            .find(|r| r.1 <= v && v <= r.2)
            .ok_or_else(|| {
                ApiError::invalid(
                    "requiredIp",
                    format!("{w} is in no IP range of L3 network {l3}"),
                )
            })?;
        if to_int(&range.4)? == v || is_used(v)? {
            return Err(ApiError::invalid(
                "requiredIp",
                format!("{w} is already in use on L3 network {l3}"),
            ));
        }
        pick = Some((range.clone(), v));
    } else {
        for range in &ranges {
            let (_, s, e, _, g) = range;
            let size = (e - s) as u64 + 1;
            let used: i64 = conn
                .prepare_cached("SELECT count(*) FROM used_ip WHERE ip_range_uuid = ?1")?
                .query_row([&range.0], |r| r.get(0))?;
            let gw = to_int(g)?;
            let gw_inside = (*s..=*e).contains(&gw) as u64;
            if used as u64 + gw_inside >= size {
                continue;
            }
            let mut seed = [0u8; 4];
            getrandom::getrandom(&mut seed).map_err(|e| ApiError::internal(e.to_string()))?;
            let offset = (u32::from_le_bytes(seed) as u64 % size) as u32;
            for i in 0..size as u32 {
                let v = s + (offset.wrapping_add(i) % size as u32);
                if v != gw && !is_used(v)? {
                    pick = Some((range.clone(), v));
                    break;
                }
            }
            if pick.is_some() {
                break;
            }
        }
    }
    let Some(((range_uuid, _, _, mask, gw), v)) = pick else {
        return Err(ApiError::no_capacity(format!(
            "every address of L3 network {l3} is in use; add an IP range"
        ))
        .field("l3NetworkUuid"));
    };
    let uuid = crate::new_uuid();
    let ip = Ipv4Addr::from(v).to_string();
    conn.prepare_cached(
        "INSERT INTO used_ip (uuid, l3_uuid, ip_range_uuid, ip, ip_int, owner_type, owner_uuid, create_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![uuid, l3, range_uuid, ip, v as i64, owner_type, owner, auth::now()])?;
    Ok(UsedIp {
        uuid,
        ip,
        netmask: mask,
        gateway: gw,
    })
}

fn create_vip(c: &Call) -> Result<Value, ApiError> {
    let l3 = c.required("l3NetworkUuid")?;
    exists(c.conn, "l3_network", "L3Network", l3, "l3NetworkUuid")?;
    let wanted = match c.str("requiredIp") {
        None => None,
        Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            ApiError::invalid(
                "requiredIp",
                format!("requiredIp {s:?} is not an IPv4 address"),
            )
        })?),
    };
    let uuid = crate::new_uuid();
    let tx = c.conn.unchecked_transaction()?;
    let used = allocate_ip(&tx, l3, "Vip", &uuid, wanted)?;
    tx.execute(
        "INSERT INTO vip (uuid, l3_uuid, name, description, ip, state, used_ip_uuid, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, 'Enabled', ?6, ?7, ?7)",
        params![uuid, l3, c.required("name")?, c.str("description"), used.ip, used.uuid, auth::now()],
    )?;
    tx.commit()?;
    Ok(inventory(one(c.conn, &VIP, &uuid)?))
}

fn query_vip(c: &Call) -> Result<Value, ApiError> {
    c.query(&VIP)
}

fn delete_vip(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "vip", "Vip", uuid, "uuid")?;
    let eip: Option<String> = c
        .conn
        .query_row("SELECT uuid FROM eip WHERE vip_uuid = ?1", [uuid], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(eip) = eip {
        return Err(
            ApiError::in_use(format!("EIP {eip} uses VIP {uuid}; delete the EIP first"))
                .field("uuid"),
        );
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM used_ip WHERE owner_uuid = ?1 AND owner_type = 'Vip'",
        [uuid],
    )?;
    tx.execute("DELETE FROM vip WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}
