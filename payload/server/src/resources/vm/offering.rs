//! Instance offerings: the CPUs and memory of VMs made from them.

use rusqlite::params;
use serde_json::{json, Value};

use super::OFFERING;
use crate::api::{exists, inventory, one, Call};
use crate::auth;
use crate::error::ApiError;

pub(super) fn create_offering(c: &Call) -> Result<Value, ApiError> {
    let cpu = c
        .int("cpuNum", 1, 1024)?
        .ok_or_else(|| ApiError::missing("cpuNum"))?;
    let mem = c
        .size("memorySize")?
        .ok_or_else(|| ApiError::missing("memorySize"))?;
    if mem < 16 << 20 {
        return Err(ApiError::invalid(
            "memorySize",
            "memorySize must be at least 16M",
        ));
    }
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO instance_offering (uuid, name, description, cpu_num, memory_size, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![uuid, c.required("name")?, c.str("description"), cpu, mem, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &OFFERING, &uuid)?))
}

pub(super) fn query_offering(c: &Call) -> Result<Value, ApiError> {
    c.query(&OFFERING)
}

pub(super) fn delete_offering(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(
        c.conn,
        "instance_offering",
        "InstanceOffering",
        uuid,
        "uuid",
    )?;
    c.conn
        .execute("DELETE FROM instance_offering WHERE uuid = ?1", [uuid])?;
    Ok(json!({}))
}
