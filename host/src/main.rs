//! `gatehouse`: the identity-aware gateway for ML inference.

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use gatehouse_engine::{Engine, Facts, decision_tests};
use gatehouse_host::{Gateway, client, demo, load_engine};
use std::sync::Arc;

// Allocation-heavy paths (HTTP heads, JSON, Cedar values) spent ~10 % of the gateway's CPU in glibc malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "Identity-aware gateway for ML inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration, or the built-in demo when none is given.
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<String>,
        /// Address to listen on (overrides the configuration).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Write a deployable Cloudflare Worker (engine core, shim, plugins, compiled config, wrangler.toml).
    Bundle {
        /// Configuration file.
        #[arg(long)]
        config: String,
        /// Output directory.
        #[arg(long)]
        out: String,
    },
    /// Validate a configuration, its policies against the schema, and its plugins.
    Check {
        /// Configuration file.
        #[arg(long)]
        config: String,
    },
    /// Dry-run a request offline and print the decision with its reasons.
    Authorize {
        /// Configuration file.
        #[arg(long)]
        config: String,
        /// Request file (JSON): method, path, identity {issuer, subject, kind, groups, scopes}, client_ip, payload_size, inference {operation, model_name, deployment, instances, max_tokens, stream}.
        #[arg(long)]
        request: String,
    },
    /// Run the policy decision corpus (`policies/tests` by default).
    Test {
        /// Configuration file whose policies (and `policies.tests`) to use; the demo policies if absent.
        #[arg(long)]
        config: Option<String>,
        /// Corpus directory (overrides the configuration).
        #[arg(long)]
        tests: Option<String>,
    },
    /// Print a token from the running demo's dev issuer (demo only).
    Token {
        /// Subject.
        #[arg(long, default_value = "demo-user")]
        sub: String,
        /// Groups, comma-separated.
        #[arg(long, default_value = "")]
        groups: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Audience.
        #[arg(long, default_value = demo::AUDIENCE)]
        aud: String,
        /// Where the demo listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        // The workers have their own loops (`serve_threads`); this one only waits for signals.
        Command::Serve { config: Some(path), listen } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve_config(path, listen))
        }
        Command::Serve { config: None, listen } => {
            runtime()?.block_on(serve_demo(listen.unwrap_or_else(|| "127.0.0.1:8080".into())))
        }
        Command::Check { config } => check(&config),
        Command::Bundle { config, out } => bundle(&config, &out),
        Command::Authorize { config, request } => authorize(&config, &request),
        Command::Test { config, tests } => test(config.as_deref(), tests.as_deref()),
        Command::Token { sub, groups, ttl, aud, listen } => runtime()?.block_on(token(sub, groups, ttl, aud, listen)),
    }
}

async fn serve_config(path: String, listen: Option<String>) -> Result<i32> {
    let gateway = Arc::new(Gateway::from_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?);
    let addr = listen.unwrap_or_else(|| gateway.loaded().engine.config.server.listen.clone());
    let listener = std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    let threads = match gateway.loaded().engine.config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let local = gatehouse_host::serve_threads(&gateway, listener, threads)?;
    gatehouse_host::log(format_args!("serving {path} on http://{local} (SIGHUP reloads; invalid changes are refused)"));
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match gateway.reload(&path) {
                Ok(()) => gatehouse_host::log(format_args!("reloaded {path}")),
                Err(e) => gatehouse_host::log(format_args!("reload refused, keeping the running configuration:\n{e}")),
            },
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

async fn serve_demo(listen: String) -> Result<i32> {
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let gateway = Arc::new(demo::gateway(local).await?);
    gatehouse_host::serve_on(gateway, listener)?;
    let port_flag = if listen == "127.0.0.1:8080" { String::new() } else { format!(" --listen {local}") };
    gatehouse_host::log(format_args!(
        "demo on http://{local} (dev issuer, demo backend, example policies). Try:\n\
         \n  TOKEN=$(gatehouse token --sub alice --groups data-scientists{port_flag})\n  \
         curl -i -X POST http://{local}/v1/models/demo:predict -H \"authorization: Bearer $TOKEN\" -d '{{\"instances\": [[1, 2]]}}'\n\
         \n  TOKEN=$(gatehouse token --sub bob{port_flag})   # no group: 403\n"
    ));
    tokio::signal::ctrl_c().await?;
    Ok(0)
}

fn load(config: &str) -> Result<Engine, Vec<String>> {
    gatehouse_host::engine_from_file(config).map_err(|e| e.locations().iter().map(ToString::to_string).collect())
}

fn check(config: &str) -> Result<i32> {
    let engine = match load(config) {
        Ok(e) => e,
        Err(lines) => {
            for l in lines {
                eprintln!("{l}");
            }
            return Ok(1);
        }
    };
    let client = client::build();
    let routes = engine.config.routes.len();
    let policies = engine.policies.len();
    match load_engine(engine, &client) {
        Ok(loaded) => {
            println!("{config}: ok ({policies} policies, {routes} routes)");
            for p in loaded.plugins.iter() {
                println!(
                    "  plugin {} ({} {}, {}): sha256 {}",
                    p.name, p.manifest.name, p.manifest.version, p.manifest.kind, p.sha256
                );
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("{config}:1: {e}");
            Ok(1)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    #[serde(default = "post")]
    method: String,
    path: String,
    identity: DryIdentity,
    #[serde(default = "loopback")]
    client_ip: String,
    #[serde(default)]
    payload_size: u64,
    /// Facts a backend adapter would state (`context.inference`).
    #[serde(default)]
    inference: Option<gatehouse_plugin_abi::Facts>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DryIdentity {
    issuer: String,
    subject: String,
    #[serde(default)]
    kind: gatehouse_plugin_abi::PrincipalKind,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    email: Option<String>,
}

fn post() -> String {
    "POST".into()
}
fn loopback() -> String {
    "127.0.0.1".into()
}

fn authorize(config: &str, request: &str) -> Result<i32> {
    let engine = match load(config) {
        Ok(e) => e,
        Err(lines) => bail!("{}", lines.join("\n")),
    };
    let text = std::fs::read_to_string(request).with_context(|| format!("cannot read {request}"))?;
    let req: DryRun = serde_json::from_str(&text).with_context(|| format!("{request}: not a dry-run request"))?;
    let mut claims = serde_json::Map::new();
    if let Some(e) = &req.identity.email {
        claims.insert("email".into(), e.clone().into());
    }
    let identity = gatehouse_plugin_abi::Identity {
        issuer: req.identity.issuer,
        subject: req.identity.subject,
        kind: req.identity.kind,
        groups: req.identity.groups,
        scopes: req.identity.scopes,
        kid: None,
        jti: None,
        expires_at: 0,
        claims,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let facts = Facts {
        method: &req.method,
        path: &req.path,
        client_ip: &req.client_ip,
        time: now,
        payload_size: req.payload_size,
        inference: req.inference.as_ref(),
    };
    match engine.explain(&facts, &identity) {
        Err(r) => {
            println!(
                "{}",
                serde_json::json!({"decision": "deny", "status": r.status(), "reason": r.kind(), "detail": r.detail()})
            );
            Ok(1)
        }
        Ok((route, question, decision)) => {
            let origins: Vec<String> = decision
                .policy_ids
                .iter()
                .map(|id| engine.policies.origin(id).map_or(id.clone(), |o| format!("{id} ({}:{})", o.file, o.line)))
                .collect();
            let out = serde_json::json!({
                "decision": if decision.allowed { "allow" } else { "deny" },
                "route": route,
                "principal": format!("Gatehouse::{:?}::\"{}\"", question.kind, question.principal),
                "action": question.action,
                "resource": question.resource,
                "policies": origins,
                "errors": decision.errors,
                "reason": if decision.allowed { "permitted" } else if decision.policy_ids.is_empty() { "no policy permits this request (default deny)" } else { "forbidden by policy" },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(if decision.allowed { 0 } else { 2 })
        }
    }
}

fn test(config: Option<&str>, tests: Option<&str>) -> Result<i32> {
    let (engine, default_dir) = match config {
        Some(path) => {
            let engine = load(path).map_err(|l| anyhow::anyhow!("{}", l.join("\n")))?;
            let base = std::path::Path::new(path).parent().map(|p| p.to_path_buf()).unwrap_or_default();
            let dir = engine.config.policies.tests.as_ref().map(|t| base.join(t).display().to_string());
            (engine, dir)
        }
        None => (demo::engine("127.0.0.1:8080", "127.0.0.1:9")?, None),
    };
    let dir = tests.map(str::to_owned).or(default_dir).unwrap_or_else(|| "policies/tests".into());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read the corpus directory {dir}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file)?;
        match decision_tests::run(&engine.policies, &name, &text) {
            Err(e) => {
                println!("FAIL {e}");
                failed += 1;
            }
            Ok(outcomes) => {
                for o in outcomes {
                    if o.passed {
                        passed += 1;
                        println!("ok   {}", o.at);
                    } else {
                        failed += 1;
                        println!("FAIL {}", o.at);
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 && passed > 0 { 0 } else { 1 })
}

async fn token(sub: String, groups: String, ttl: i64, aud: String, listen: String) -> Result<i32> {
    use http_body_util::{BodyExt, Full};
    let groups: Vec<&str> = groups.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
    let body = serde_json::json!({"sub": sub, "groups": groups, "ttl": ttl, "aud": aud}).to_string();
    let client = client::build();
    let req = http::Request::post(format!("http://{listen}/_dev/token"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let res =
        client.request(req).await.with_context(|| format!("is the demo running on {listen}? (`gatehouse serve`)"))?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("the demo answered {status}: {}", String::from_utf8_lossy(&bytes));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    println!("{}", v.get("access_token").and_then(|t| t.as_str()).context("no access_token in the answer")?);
    Ok(0)
}

fn bundle(config: &str, out: &str) -> Result<i32> {
    let report = gatehouse_host::bundle::bundle(config, std::path::Path::new(out))?;
    let total: u64 = report.files.iter().map(|(_, n)| n).sum();
    println!("{out}: a Worker of {} files, {total} bytes", report.files.len());
    for (f, n) in &report.files {
        println!("  {f:<32} {n:>9}");
    }
    for (name, sha) in &report.plugins {
        println!("  plugin {name}: sha256 {sha}");
    }
    for (binding, what) in &report.secrets {
        println!("  secret: wrangler secret put {binding}   ({what})");
    }
    println!("deploy: cd {out} && wrangler deploy");
    Ok(0)
}
