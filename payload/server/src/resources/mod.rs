//! The API's calls, one module per resource family. Each module declares its calls in `APIS`
//! and its queryable tables as [`crate::query::Table`]s.

pub mod account;
pub mod cluster;
pub mod eip;
pub mod host;
pub mod host_deploy;
pub mod host_join;
pub mod image;
pub mod network;
pub mod storage;
pub mod vm;
pub mod zone;

/// `UPDATE`s `table` to `state` for `uuid`, stamping `last_op_date`.
pub fn set_state(
    conn: &rusqlite::Connection,
    table: &str,
    column: &str,
    uuid: &str,
    value: &str,
) -> Result<(), crate::error::ApiError> {
    conn.execute(
        &format!("UPDATE {table} SET {column} = ?2, last_op_date = ?3 WHERE uuid = ?1"),
        rusqlite::params![uuid, value, crate::auth::now()],
    )?;
    Ok(())
}

/// Changes an attachment row (`sql` inserts or deletes it); when nothing changed the call was
/// refused: `INVALID_STATE` on `field` with `message` (already attached / not attached).
pub fn change_attachment(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    field: &str,
    message: String,
) -> Result<(), crate::error::ApiError> {
    if conn.execute(sql, params)? == 0 {
        return Err(crate::error::ApiError::wrong_state(message).field(field));
    }
    Ok(())
}

/// The first column of `sql` (one `?1` parameter) as strings.
pub fn strings(
    conn: &rusqlite::Connection,
    sql: &str,
    param: &str,
) -> Result<Vec<String>, crate::error::ApiError> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map([param], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Adds to an inventory, under `key`, the list `sql` answers for the inventory's uuid: how
/// inventories show what is attached to them.
pub fn add_list(
    conn: &rusqlite::Connection,
    inventory: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    sql: &str,
) -> Result<(), crate::error::ApiError> {
    let Some(uuid) = inventory
        .get("uuid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
    else {
        return Ok(());
    };
    let list = strings(conn, sql, &uuid)?;
    inventory.insert(key.into(), serde_json::Value::from(list));
    Ok(())
}

/// Refuses to detach a resource from `cluster` while VMs of that cluster that are on a host
/// (running, paused, starting...) still use it. `vms_using_it` selects the uuids of the VMs
/// using the resource, with the resource's uuid as `?1`; `uses_it` completes the message
/// ("use L2 network ...") and `field` names the parameter the refusal is about.
pub fn refuse_while_running_vms_use(
    conn: &rusqlite::Connection,
    vms_using_it: &str,
    resource: &str,
    cluster: &str,
    uses_it: &str,
    field: &str,
) -> Result<(), crate::error::ApiError> {
    let running = crate::api::count(
        conn,
        &format!(
            "SELECT count(*) FROM vm_instance vm
              WHERE vm.cluster_uuid = ?2 AND vm.host_uuid IS NOT NULL
                AND vm.uuid IN ({vms_using_it})"
        ),
        rusqlite::params![resource, cluster],
    )?;
    if running > 0 {
        return Err(crate::error::ApiError::in_use(format!(
            "{running} VM(s) of cluster {cluster} {uses_it}; stop them first"
        ))
        .field(field));
    }
    Ok(())
}
