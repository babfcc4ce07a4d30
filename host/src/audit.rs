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
        let Ok(line) = serde_json::to_string(record) else { return };
        match self {
            AuditSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
            AuditSink::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            AuditSink::Memory(v) => {
                if let Ok(mut v) = v.lock() {
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
