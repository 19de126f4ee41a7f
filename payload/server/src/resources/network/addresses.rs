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

/// The addresses of an IP range as integers: `start..=end`, of which `gateway` (when inside)
/// is never handed out.
#[derive(Debug, Clone, Copy)]
struct RangeSpan {
    start: u32,
    end: u32,
    gateway: u32,
}

impl RangeSpan {
    fn size(&self) -> u64 {
        u64::from(self.end - self.start) + 1
    }

    /// Whether `used` addresses handed out from the range leave none free.
    fn is_full(&self, used: u64) -> bool {
        let gateway_inside = (self.start..=self.end).contains(&self.gateway) as u64;
        used + gateway_inside >= self.size()
    }

    /// The first address that is neither the gateway nor used (`is_used`), walking the range
    /// from its `seed`-th address (modulo its size) and wrapping round; `None` when there is
    /// none.
    fn first_free_from(
        &self,
        seed: u32,
        is_used: impl Fn(u32) -> Result<bool, ApiError>,
    ) -> Result<Option<u32>, ApiError> {
        let size = self.size();
        let offset = u64::from(seed) % size;
        for i in 0..size {
            let v = self.start + ((offset + i) % size) as u32;
            if v != self.gateway && !is_used(v)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
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
            let span = RangeSpan {
                start: range.1,
                end: range.2,
                gateway: to_int(&range.4)?,
            };
            let used: i64 = conn
                .prepare_cached("SELECT count(*) FROM used_ip WHERE ip_range_uuid = ?1")?
                .query_row([&range.0], |r| r.get(0))?;
            if span.is_full(used as u64) {
                continue;
            }
            let mut seed = [0u8; 4];
            getrandom::getrandom(&mut seed).map_err(|e| ApiError::internal(e.to_string()))?;
            if let Some(v) = span.first_free_from(u32::from_le_bytes(seed), is_used)? {
                pick = Some((range.clone(), v));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use std::collections::HashSet;

    use super::*;

    fn int(ip: &str) -> u32 {
        u32::from(ip.parse::<Ipv4Addr>().unwrap())
    }

    /// 10.0.0.10-10.0.0.14 with the gateway `gateway`.
    fn span(gateway: &str) -> RangeSpan {
        RangeSpan {
            start: int("10.0.0.10"),
            end: int("10.0.0.14"),
            gateway: int(gateway),
        }
    }

    fn used(ips: &[&str]) -> impl Fn(u32) -> Result<bool, ApiError> {
        let set: HashSet<u32> = ips.iter().map(|ip| int(ip)).collect();
        move |v| Ok(set.contains(&v))
    }

    fn free_from(span: RangeSpan, seed: u32, taken: &[&str]) -> Option<String> {
        span.first_free_from(seed, used(taken))
            .unwrap()
            .map(|v| Ipv4Addr::from(v).to_string())
    }

    #[test]
    fn the_walk_starts_at_the_seed_and_wraps_round_the_range() {
        let s = span("10.0.0.1");
        assert_eq!(free_from(s, 0, &[]).as_deref(), Some("10.0.0.10"));
        assert_eq!(free_from(s, 3, &[]).as_deref(), Some("10.0.0.13"));
        assert_eq!(
            free_from(s, 5, &[]).as_deref(),
            Some("10.0.0.10"),
            "the seed is taken modulo the size"
        );
        assert_eq!(
            free_from(s, u32::MAX, &[]).as_deref(),
            Some("10.0.0.10"),
            "u32::MAX % 5 = 0"
        );
        assert_eq!(
            free_from(s, 3, &["10.0.0.13", "10.0.0.14"]).as_deref(),
            Some("10.0.0.10"),
            "past the end it goes on from the start"
        );
    }

    #[test]
    fn used_addresses_and_the_gateway_are_never_picked() {
        let s = span("10.0.0.12");
        for seed in 0..10 {
            let got = free_from(s, seed, &["10.0.0.10", "10.0.0.11", "10.0.0.14"]);
            assert_eq!(got.as_deref(), Some("10.0.0.13"), "seed {seed}");
        }
        assert_eq!(
            free_from(s, 0, &["10.0.0.10", "10.0.0.11", "10.0.0.13", "10.0.0.14"]),
            None,
            "only the gateway is left"
        );
    }

    #[test]
    fn a_range_is_full_when_its_used_addresses_and_gateway_fill_it() {
        let outside = span("10.0.0.1");
        assert!(!outside.is_full(4));
        assert!(outside.is_full(5));
        let inside = span("10.0.0.12");
        assert!(!inside.is_full(3));
        assert!(inside.is_full(4), "the gateway takes the fifth address");
        let one = RangeSpan {
            start: int("10.0.0.10"),
            end: int("10.0.0.10"),
            gateway: int("10.0.0.1"),
        };
        assert_eq!(one.size(), 1);
        assert_eq!(free_from(one, 7, &[]).as_deref(), Some("10.0.0.10"));
        assert_eq!(free_from(one, 7, &["10.0.0.10"]), None);
    }

    #[test]
    fn an_error_from_the_used_check_is_passed_on() {
        let failing = |_| Err(ApiError::internal("db gone"));
        let e = span("10.0.0.1").first_free_from(0, failing).unwrap_err();
        assert_eq!(e.message, "db gone");
    }
}
