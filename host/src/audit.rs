//! Where audit records go: one JSON line each, to stdout, a file, or nowhere.

use gatehouse_engine::AuditRecord;
use std::io::Write;
use std::sync::Mutex;

/// An audit destination.
pub enum AuditSink {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(Mutex<std::fs::File>),
    /// An in-memory list (for embedding and tests).
    Memory(Mutex<Vec<String>>),
    /// Discarded.
    Off,
}

impl AuditSink {
    /// The sink a configuration's `server.audit` names: `stdout`, `off`, or a file path.
    pub fn open(spec: &str) -> std::io::Result<AuditSink> {
        Ok(match spec {
            "stdout" => AuditSink::Stdout,
            "off" => AuditSink::Off,
            path => AuditSink::File(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)),
        })
    }

    /// Writes one record as one line.
    pub fn write(&self, record: &AuditRecord) {
        if let AuditSink::Off = self {
            return;
        }
        let Ok(mut line) = serde_json::to_vec(record) else { return };
        line.push(b'\n');
        // One write per record, with its newline: a record is never split over two system calls (an unbuffered
        // file would otherwise get the line and the newline separately).
        match self {
            AuditSink::Stdout => {
                let _ = std::io::stdout().lock().write_all(&line);
            }
            AuditSink::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(&line);
                }
            }
            AuditSink::Memory(v) => {
                line.pop();
                if let (Ok(mut v), Ok(line)) = (v.lock(), String::from_utf8(line)) {
                    v.push(line);
                }
            }
            AuditSink::Off => {}
        }
    }

    /// The lines an in-memory sink holds.
    pub fn lines(&self) -> Vec<String> {
        match self {
            AuditSink::Memory(v) => v.lock().map(|v| v.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}
