//! `GetVmConsoleLog`: a VM's serial console log, read from the host it runs on (or last ran
//! on, where a stopped VM's log stays) through its [`crate::agent::HostAgent`].

use serde_json::{json, Value};
use zstack_common::agent_proto::ConsoleLogRequest;

use crate::api::{inventory, Call};
use crate::error::ApiError;
use crate::resources::host::HostRow;

use super::lifecycle::vm_row;

pub(super) fn get_console_log(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    let offset = c.int("offset", 0, i64::MAX)?.unwrap_or(0);
    let row = vm_row(c.conn, uuid).map_err(|e| e.field("uuid"))?;
    let host_uuid = row.host.or(row.last_host).ok_or_else(|| {
        ApiError::wrong_state(format!(
            "VM {uuid} is on no host (it has not run on one yet, or the host it last ran on \
             was deleted), so it has no console log; start it (StartVmInstance uuid={uuid}) \
             and ask again"
        ))
        .field("uuid")
    })?;
    let host = HostRow::load(c.conn, &host_uuid).map_err(|e| match e.code {
        "RESOURCE_NOT_FOUND" => ApiError::wrong_state(format!(
            "the host VM {uuid} last ran on ({host_uuid}) was deleted, and its console log \
             with it; start the VM to have a new one"
        ))
        .field("uuid"),
        _ => e,
    })?;
    let log = c.node.agent(&host)?.console_log(&ConsoleLogRequest {
        uuid: uuid.to_string(),
        offset: u64::try_from(offset).unwrap_or(0),
    })?;
    Ok(inventory(json!({
        "vmInstanceUuid": uuid,
        "hostUuid": host.uuid,
        "text": log.text,
        "offset": log.offset,
        "nextOffset": log.next_offset,
        "size": log.size,
        "restarted": log.restarted,
        "source": log.source,
    })))
}
