//! Runs a configuration as a Cloudflare Worker in the real Workers runtime: `gatehouse bundle` writes the
//! Worker, this module writes a workerd configuration around it (with an outbound network that may reach
//! loopback, which workerd refuses by default) and starts `workerd` from the npm package in `tests/workerd`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workerd binary installed by `npm ci` in `tests/workerd`.
pub fn binary() -> PathBuf {
    PathBuf::from(super::repo("tests/workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd"))
}

/// A running workerd serving a bundle.
pub struct Workerd {
    pub addr: SocketAddr,
    /// Where the Worker is reached through a stand-in for Cloudflare's edge (see [`EDGE_JS`]).
    pub edge: SocketAddr,
    pub dir: PathBuf,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Worker standing in for Cloudflare's edge in front of Gatehouse, where a caller that hangs up cancels the
/// Worker's invocation (its handler stops; `request.signal` fires). Standalone workerd does not notice a
/// caller's connection closing (the handler runs on), so the caller says when it leaves
/// (`x-hang-up-after-ms`) and this front cancels its subrequest to Gatehouse then: the same cancellation.
const EDGE_JS: &str = r#"export default {
  async fetch(request, env) {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), Number(request.headers.get("x-hang-up-after-ms") ?? 0));
    try {
      return await env.GATEHOUSE.fetch(request, { signal: controller.signal });
    } catch (e) {
      return new Response(null, { status: 499 });
    }
  },
};
"#;

/// The workerd configuration for the bundle in `dir`, listening on `port` (and `edge_port`, through the
/// [`EDGE_JS`] front), with `secrets` as text bindings.
pub fn capnp(dir: &Path, port: u16, edge_port: u16, secrets: &[(String, String)]) -> String {
    std::fs::write(dir.join("edge.js"), EDGE_JS).unwrap();
    let mut modules = String::new();
    for m in ["worker.js", "bundle.js"] {
        let _ = writeln!(modules, "    (name = \"{m}\", esModule = embed \"{m}\"),");
    }
    let _ = writeln!(modules, "    (name = \"gatehouse_core.wasm\", wasm = embed \"gatehouse_core.wasm\"),");
    let mut plugins: Vec<_> =
        std::fs::read_dir(dir.join("plugins")).unwrap().flatten().map(|e| e.file_name()).collect();
    plugins.sort();
    for p in plugins {
        let p = p.to_string_lossy();
        let _ = writeln!(modules, "    (name = \"plugins/{p}\", wasm = embed \"plugins/{p}\"),");
    }
    let mut bindings = String::new();
    for (name, value) in secrets {
        let _ = writeln!(bindings, "    (name = {}, text = {}),", serde_json::json!(name), serde_json::json!(value));
    }
    format!(
        r#"using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "gatehouse", worker = .worker),
    (name = "loopback", network = (allow = ["public", "private", "local"])),
    (name = "edge", worker = .edge),
  ],
  sockets = [
    (name = "http", address = "127.0.0.1:{port}", http = (), service = "gatehouse"),
    (name = "edge", address = "127.0.0.1:{edge_port}", http = (), service = "edge"),
  ],
);

const edge :Workerd.Worker = (
  modules = [(name = "edge.js", esModule = embed "edge.js")],
  bindings = [(name = "GATEHOUSE", service = "gatehouse")],
  compatibilityDate = "{date}",
);

const worker :Workerd.Worker = (
  modules = [
{modules}  ],
  bindings = [
{bindings}  ],
  compatibilityDate = "{date}",
  compatibilityFlags = {flags:?},
  globalOutbound = "loopback",
);
"#,
        date = gatehouse_host::bundle::COMPATIBILITY_DATE,
        flags = gatehouse_host::bundle::COMPATIBILITY_FLAGS,
    )
}

impl Workerd {
    /// Bundles `config` (a file path) into `dir` and serves it. `secrets` binds each secret binding the bundle
    /// names to the contents of the file it stands for, read at start (as `wrangler secret put` would).
    pub fn start(config: &str, dir: &Path) -> Workerd {
        let report = gatehouse_host::bundle::bundle(config, dir).unwrap();
        let bundle_js = std::fs::read_to_string(dir.join("bundle.js")).unwrap();
        let mut secrets = Vec::new();
        for (binding, what) in &report.secrets {
            if let Some(path) = what.strip_prefix("the contents of ") {
                let value = std::fs::read_to_string(path).unwrap_or_default();
                secrets.push((binding.clone(), value));
            } else if let Ok(v) = std::env::var(binding) {
                secrets.push((binding.clone(), v));
            }
        }
        assert!(bundle_js.contains("export const bundle"));
        let (port, edge_port) = (free_port(), free_port());
        std::fs::write(dir.join("workerd.capnp"), capnp(dir, port, edge_port, &secrets)).unwrap();
        let bin = binary();
        assert!(
            bin.is_file(),
            "{} is missing: run `npm install --prefix tests/workerd --no-package-lock` (scripts/test does)",
            bin.display()
        );
        let mut child = Command::new(bin)
            .current_dir(dir)
            .args(["serve", "workerd.capnp", "--verbose"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("workerd exited ({status}):\n{}", output.lock().unwrap());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "workerd did not listen:\n{}", output.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        let edge = format!("127.0.0.1:{edge_port}").parse().unwrap();
        Workerd { addr, edge, dir: dir.to_owned(), child, output }
    }

    /// The workerd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything workerd printed.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The audit records the Worker logged (one JSON object per `console.log` line).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.output()
            .lines()
            .filter_map(|l| l.find("{\"time\":").map(|i| &l[i..]))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
