//! IP ranges of L3 networks, the addresses handed out from them (to VM NICs, VIPs and each L3's
//! DHCP server) and VIPs.
//!
//! IP allocation never hands one address out twice: every allocation runs inside the caller's
//! transaction under the management node's single DB lock, probes for a free address from a
//! random point of the range (so a nearly empty range costs one probe), and the `used_ip` table's
//! unique key on (L3, address) stands behind it.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use super::{l3_services, uuid_of};
use crate::api::{count, exists, inventory, one, Call};
use crate::auth;
use crate::error::ApiError;
use crate::query::Table;

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

fn ip(c: &Call, k: &str) -> Result<Ipv4Addr, ApiError> {
    let v = c.required(k)?;
    v.parse::<Ipv4Addr>()
        .map_err(|_| ApiError::invalid(k, format!("{k} {v:?} is not an IPv4 address")))
}

pub(super) fn add_ip_range(c: &Call) -> Result<Value, ApiError> {
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

pub(super) fn query_ip_range(c: &Call) -> Result<Value, ApiError> {
    c.query(&IP_RANGE)
}

pub(super) fn delete_ip_range(c: &Call) -> Result<Value, ApiError> {
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

pub(super) fn create_vip(c: &Call) -> Result<Value, ApiError> {
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

pub(super) fn query_vip(c: &Call) -> Result<Value, ApiError> {
    c.query(&VIP)
}

pub(super) fn delete_vip(c: &Call) -> Result<Value, ApiError> {
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
