//! Processes named by pid files: a pid read back from a file is trusted only while that pid
//! runs the program the file is for (`/proc/<pid>/cmdline`), so a recycled pid is never
//! signalled.

use std::path::Path;

/// The pid written in `pid_file`, if the file holds one.
pub fn pid_in_file(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// The command line of `pid`, its arguments joined by spaces; None when no such process runs.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string(),
    )
}

/// True if `pid` runs and its command line names `program` (a part of its path or arguments).
pub fn runs(pid: u32, program: &str) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_err() {
        return false;
    }
    cmdline(pid).is_some_and(|c| c.contains(program))
}

/// The pid in `pid_file`, if that process runs and is `program`.
pub fn live_pid(pid_file: &Path, program: &str) -> Option<u32> {
    pid_in_file(pid_file).filter(|&pid| runs(pid, program))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    #[test]
    fn a_pid_counts_only_while_it_runs_that_program() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.pid");
        assert_eq!(live_pid(&file, "x"), None);
        let me = std::process::id();
        std::fs::write(&file, format!("{me}\n")).unwrap();
        let mine = cmdline(me).unwrap();
        let program = mine.split(' ').next().unwrap();
        assert_eq!(live_pid(&file, program), Some(me));
        assert_eq!(live_pid(&file, "no-such-program-here"), None);
        std::fs::write(&file, "not a pid").unwrap();
        assert_eq!(live_pid(&file, program), None);
        std::fs::write(&file, "0").unwrap();
        assert_eq!(live_pid(&file, program), None);
    }
}
