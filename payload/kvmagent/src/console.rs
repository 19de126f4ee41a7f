//! A VM's serial console log, read back for the management node: libvirt writes the console of
//! every VM started here to `<console_dir>/<vm uuid>.console.log` (see `vm.rs`); this answers it
//! in bounded pieces from an offset, so a client can follow it.
//!
//! The caller names a VM by its uuid, never by a path: the uuid must be 32 hex digits, and the
//! VM one this host started (its console log or its saved spec is here).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use zstack_common::agent_proto::{ConsoleLog, ConsoleLogRequest, CONSOLE_LOG_MAX_BYTES};

use crate::vm::{is_vm_name, Refusal, VmHost};

impl VmHost<'_> {
    /// Where libvirt writes the serial console of VM `uuid`.
    pub fn console_file(&self, uuid: &str) -> PathBuf {
        self.console_dir.join(format!("{uuid}.console.log"))
    }

    /// The console log of VM `req.uuid` from `req.offset` on (see [`ConsoleLog`]).
    pub fn console_log(&self, req: &ConsoleLogRequest) -> Result<ConsoleLog, Refusal> {
        if !is_vm_name(&req.uuid) {
            return Err(Refusal::new(
                "BAD_REQUEST",
                format!(
                    "{:?} is not a VM uuid (32 hexadecimal digits)",
                    req.uuid.chars().take(64).collect::<String>()
                ),
            ));
        }
        let path = self.console_file(&req.uuid);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Started here, and its console has written nothing yet.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && self.saved_spec(&req.uuid).is_some() =>
            {
                return Ok(ConsoleLog::of_bytes(b"", req.offset));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Refusal::new(
                    "VM_UNKNOWN",
                    format!(
                        "VM {} was never started on this host, so it has no console log here",
                        req.uuid
                    ),
                ))
            }
            Err(e) => {
                return Err(Refusal::new(
                    "INTERNAL_ERROR",
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        let unreadable = |e: std::io::Error| {
            Refusal::new(
                "INTERNAL_ERROR",
                format!("cannot read {}: {e}", path.display()),
            )
        };
        let size = file.metadata().map_err(unreadable)?.len();
        let (start, restarted) = ConsoleLog::start_of(req.offset, size);
        file.seek(SeekFrom::Start(start)).map_err(unreadable)?;
        let mut bytes = Vec::new();
        file.take(CONSOLE_LOG_MAX_BYTES.min(size - start))
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        Ok(ConsoleLog {
            restarted,
            ..ConsoleLog::piece(&bytes, start, size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zstack_common::templates::Templates;

    const VM: &str = "0123456789abcdef0123456789abcdef";

    fn read(dir: &std::path::Path, uuid: &str, offset: u64) -> Result<ConsoleLog, Refusal> {
        let templates = Templates::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"),
        )
        .unwrap();
        let host = VmHost {
            tools: &crate::host::SystemTools,
            templates: &templates,
            run_dir: dir.join("run"),
            console_dir: dir.join("vms"),
            image_client: &zstack_common::http_client::agent(Default::default()),
            domain_type: "qemu",
            state_dir: dir.join("state"),
            metadata: None,
        };
        host.console_log(&ConsoleLogRequest {
            uuid: uuid.into(),
            offset,
        })
    }

    #[test]
    fn the_console_log_is_followed_from_an_offset_in_bounded_pieces() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vms")).unwrap();
        let file = dir.path().join(format!("vms/{VM}.console.log"));
        std::fs::write(&file, "SeaBIOS\r\nBooting from Hard Disk...\r\n").unwrap();
        let first = read(dir.path(), VM, 0).unwrap();
        assert_eq!(first.text, "SeaBIOS\r\nBooting from Hard Disk...\r\n");
        assert_eq!((first.next_offset, first.size), (36, 36));

        // The guest writes more: the next call from next_offset has only the new bytes.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(&vec![b'k'; 100_000]).unwrap();
        let second = read(dir.path(), VM, first.next_offset).unwrap();
        assert_eq!(second.offset, 36);
        assert_eq!(second.text.len() as u64, CONSOLE_LOG_MAX_BYTES);
        assert!(second.text.bytes().all(|b| b == b'k'));
        assert_eq!(second.size, 100_036);
        let third = read(dir.path(), VM, second.next_offset).unwrap();
        assert_eq!(third.next_offset, 100_036);
        assert_eq!(
            third.text.len(),
            100_036 - 36 - CONSOLE_LOG_MAX_BYTES as usize
        );

        // Truncated (rotated): an offset past the end starts again at 0, and says so.
        std::fs::write(&file, "new boot\n").unwrap();
        let after = read(dir.path(), VM, third.next_offset).unwrap();
        assert!(after.restarted);
        assert_eq!((after.offset, after.text.as_str()), (0, "new boot\n"));
    }

    #[test]
    fn only_a_vm_uuid_of_a_vm_started_here_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vms")).unwrap();
        std::fs::write(dir.path().join("secret"), "not a console").unwrap();
        for bad in [
            "../secret",
            "../../etc/passwd",
            "",
            "0123456789abcdef0123456789abcdeg",
        ] {
            let r = read(dir.path(), bad, 0).unwrap_err();
            assert_eq!(r.code, "BAD_REQUEST", "{bad}");
        }
        let r = read(dir.path(), VM, 0).unwrap_err();
        assert_eq!(r.code, "VM_UNKNOWN");
        assert!(
            r.message.contains("never started on this host"),
            "{}",
            r.message
        );

        // Started here (its spec is saved) but silent so far: an empty log, not a refusal.
        std::fs::create_dir_all(dir.path().join("state/vms")).unwrap();
        let spec = serde_json::json!({
            "uuid": VM, "name": "n", "cpuNum": 1, "memorySize": 1,
            "rootVolume": {"volumeUuid": "v", "type": "Root", "installPath": "/v", "size": 1,
                           "format": "qcow2", "deviceId": 0, "cacheMode": "none"},
            "dataVolumes": [], "nics": [], "userData": null,
        });
        std::fs::write(
            dir.path().join(format!("state/vms/{VM}.json")),
            spec.to_string(),
        )
        .unwrap();
        let empty = read(dir.path(), VM, 0).unwrap();
        assert_eq!((empty.text.as_str(), empty.size), ("", 0));
    }
}
