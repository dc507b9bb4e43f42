//! A small synchronous QMP client: one connection per call (greeting, `qmp_capabilities`,
//! the command), JSON lines over the VM's unix socket, with deadlines. Asynchronous events
//! that arrive before the reply are skipped.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest QMP line read (QEMU's replies here are a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
    /// QEMU answered with an error.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Runs `command` (with `arguments`) on the QMP socket at `path`; its `return` value.
pub fn execute(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value, QmpError> {
    let io = |source| QmpError::Io {
        path: path.to_owned(),
        source,
    };
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = BufReader::new(stream);
    let greeting = read_message(&mut reader, path, deadline)?;
    if greeting.get("QMP").is_none() {
        return Err(protocol(path, format!("no greeting: {greeting}")));
    }
    let mut call = |cmd: &str, args: Option<&Value>| -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a.clone();
        }
        let mut line = msg.to_string();
        line.push('\n');
        writer.write_all(line.as_bytes()).map_err(io)?;
        loop {
            let m = read_message(&mut reader, path, deadline)?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QmpError::Command {
                    command: cmd.to_owned(),
                    class: e["class"].as_str().unwrap_or("").to_owned(),
                    desc: e["desc"].as_str().unwrap_or("").to_owned(),
                });
            }
            return Err(protocol(path, format!("unexpected message: {m}")));
        }
    };
    call("qmp_capabilities", None)?;
    call(command, arguments.as_ref())
}

fn protocol(path: &Path, reason: String) -> QmpError {
    QmpError::Protocol {
        path: path.to_owned(),
        reason,
    }
}

fn read_message(
    reader: &mut BufReader<UnixStream>,
    path: &Path,
    deadline: Instant,
) -> Result<Value, QmpError> {
    loop {
        if Instant::now() > deadline {
            return Err(protocol(path, "no answer in time".into()));
        }
        let mut line = String::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(protocol(path, "QEMU closed the connection".into()));
        }
        if line.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(line.trim())
            .map_err(|e| protocol(path, format!("bad JSON ({e}): {}", line.trim())));
    }
}

/// `query-status`: the VM's run state (`running`, `paused`, `shutdown`, ...).
pub fn status(path: &Path, timeout: Duration) -> Result<String, QmpError> {
    let r = execute(path, "query-status", None, timeout)?;
    r["status"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| protocol(path, format!("query-status without a status: {r}")))
}

/// `query-balloon`: the memory the guest has now (bytes).
pub fn balloon_actual(path: &Path, timeout: Duration) -> Result<u64, QmpError> {
    let r = execute(path, "query-balloon", None, timeout)?;
    r["actual"]
        .as_u64()
        .ok_or_else(|| protocol(path, format!("query-balloon without actual: {r}")))
}

/// `balloon`: asks the guest to give memory back until it has `bytes`.
pub fn set_balloon(path: &Path, bytes: u64, timeout: Duration) -> Result<(), QmpError> {
    execute(path, "balloon", Some(json!({ "value": bytes })), timeout).map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU that greets, checks the handshake, sends an event before each reply and
    /// answers `reply` to the command.
    fn fake(
        reply: &'static str,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            for answer in ["{\"return\": {}}", reply] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line.trim().to_owned());
                w.write_all(b"{\"event\": \"RTC_CHANGE\", \"data\": {\"offset\": 1}}\r\n")
                    .unwrap();
                w.write_all(answer.as_bytes()).unwrap();
                w.write_all(b"\r\n").unwrap();
            }
            seen
        });
        (dir, path, t)
    }

    #[test]
    fn handshake_events_and_replies() {
        let (_d, path, t) = fake("{\"return\": {\"actual\": 268435456}}");
        assert_eq!(
            balloon_actual(&path, Duration::from_secs(5)).unwrap(),
            256 << 20
        );
        let seen = t.join().unwrap();
        assert_eq!(seen[0], "{\"execute\":\"qmp_capabilities\"}");
        assert_eq!(seen[1], "{\"execute\":\"query-balloon\"}");

        let (_d, path, t) = fake("{\"return\": {}}");
        set_balloon(&path, 1 << 27, Duration::from_secs(5)).unwrap();
        let seen = t.join().unwrap();
        assert_eq!(
            seen[1],
            "{\"arguments\":{\"value\":134217728},\"execute\":\"balloon\"}"
        );
    }

    #[test]
    fn errors_say_what_failed() {
        let (_d, path, t) = fake(
            "{\"error\": {\"class\": \"DeviceNotActive\", \"desc\": \"No balloon device has been activated\"}}",
        );
        let e = balloon_actual(&path, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("DeviceNotActive"), "{e}");
        t.join().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let e = status(&missing, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("none.sock"), "{e}");
    }

    #[test]
    fn a_silent_qemu_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(700));
            drop(s);
        });
        let start = Instant::now();
        assert!(status(&path, Duration::from_millis(200)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }
}
