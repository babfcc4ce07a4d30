//! The load generator the benchmarks share: N connections for S seconds against one URL, with bearer tokens in
//! rotation; requests/s and latency percentiles.

use super::client;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BODY: &str = r#"{"instances": [[1.0, 2.0, 3.0]]}"#;
pub const PATH: &str = "/v1/models/demo:predict";

pub struct Figures {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub count: usize,
}

#[derive(Clone)]
pub enum Shape {
    /// POST the body to the URL.
    Proxy,
    /// GET the URL with nginx-style `X-Original-*` headers.
    SubRequest,
}

pub async fn load(url: String, shape: Shape, tokens: Arc<Vec<String>>, conns: usize, secs: u64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, shape, tokens, next) = (url.clone(), shape.clone(), tokens.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let mut req = match shape {
                    Shape::Proxy => http::Request::post(&url).header("content-type", "application/json"),
                    Shape::SubRequest => {
                        http::Request::get(&url).header("x-original-method", "POST").header("x-original-uri", PATH)
                    }
                };
                if !tokens.is_empty() {
                    let t = &tokens[next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let body = match shape {
                    Shape::Proxy => Bytes::from_static(BODY.as_bytes()),
                    Shape::SubRequest => Bytes::new(),
                };
                let t0 = Instant::now();
                let res = c.request(req.body(Full::new(body)).unwrap()).await.unwrap();
                assert_eq!(res.status(), 200);
                res.into_body().collect().await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    figures(all, secs as f64)
}

/// Requests/s over `secs` and the percentiles of `latencies`.
fn figures(mut latencies: Vec<Duration>, secs: f64) -> Figures {
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    Figures {
        rps: latencies.len() as f64 / secs,
        p50: pct(0.50).unwrap_or_default(),
        p99: pct(0.99).unwrap_or_default(),
        count: latencies.len(),
    }
}

pub fn print(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>9.0} req/s   p50 {:>9.1} µs   p99 {:>9.1} µs",
        f.rps,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6
    );
}

/// `n` RS256 tokens (subjects `user-0`..) of group `data-scientists`, valid for an hour: the rotation set of the
/// benchmarks.
pub fn rotating_tokens(issuer: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let mut c = super::claims(issuer, &format!("user-{i}"), &["data-scientists"]);
                c["exp"] = serde_json::json!(super::now() + 3600);
                super::mint(jsonwebtoken::Algorithm::RS256, "rsa1", &c)
            })
            .collect(),
    )
}

/// Microseconds per call of `f`: the fastest of five batches of `n / 5` calls after a warm-up (this machine is
/// a shared VM: the minimum is the figure that repeats).
pub fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let batch = (n / 5).max(1);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
        })
        .fold(f64::INFINITY, f64::min)
}

/// The benchmarks' tenant list, rule `i` of `n`: one permit per user and model, group rules, and forbids for
/// large payloads. Written in Cedar (for `bench/run` and the policy benchmark) and in Rego (for regorus).
pub enum TenantRule {
    /// Members of `team-{team}` may predict with `m{model}`.
    Group { id: usize, team: usize, model: usize },
    /// User `u{id}` is refused any request with a payload over 100 bytes.
    Forbid { id: usize },
    /// User `u{id}` may predict with `m{model}`.
    Permit { id: usize, model: usize },
}

/// Writes the benchmarks' policy set into `dir`: the example policies (`models.cedar`) and `n` tenant rules
/// (`tenants.cedar`), the set `bench/run` and the exchange benchmark load.
pub fn write_policies(dir: &std::path::Path, n: usize) {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(super::repo("policies/models.cedar"), dir.join("models.cedar")).unwrap();
    let mut text = String::new();
    for rule in tenant_rules(n) {
        let _ = writeln!(text, "{}", rule.cedar("Gatehouse::"));
    }
    std::fs::write(dir.join("tenants.cedar"), text).unwrap();
}

pub fn tenant_rules(n: usize) -> impl Iterator<Item = TenantRule> {
    (0..n).map(|i| match i % 10 {
        0 => TenantRule::Group { id: i, team: i % 50, model: i % 200 },
        1 => TenantRule::Forbid { id: i },
        _ => TenantRule::Permit { id: i, model: i % 200 },
    })
}

impl TenantRule {
    /// The rule in Cedar, entity types prefixed with `ns` (`""` or `"Gatehouse::"`).
    pub fn cedar(&self, ns: &str) -> String {
        match self {
            TenantRule::Group { id, team, model } => format!(
                "@id(\"g{id}\") permit(principal in {ns}Group::\"team-{team}\", action == {ns}Action::\"predict\", resource == {ns}Model::\"m{model}\");"
            ),
            TenantRule::Forbid { id } => format!(
                "@id(\"f{id}\") forbid(principal == {ns}User::\"u{id}\", action, resource) when {{ context.payload_size > 100 }};"
            ),
            TenantRule::Permit { id, model } => format!(
                "@id(\"p{id}\") permit(principal == {ns}User::\"u{id}\", action == {ns}Action::\"predict\", resource == {ns}Model::\"m{model}\");"
            ),
        }
    }

    /// The rule in Rego (package `gatehouse`, see [`rego_module`]), groups as a list in the input. One line:
    /// regorus refuses files of more than 20,000 lines.
    pub fn rego(&self) -> String {
        match self {
            TenantRule::Group { team, model, .. } => format!(
                "permit if {{ \"team-{team}\" in input.principal.groups; input.action == \"predict\"; input.resource == \"m{model}\" }}"
            ),
            TenantRule::Forbid { id } => {
                format!("forbid if {{ input.principal.id == \"u{id}\"; input.context.payload_size > 100 }}")
            }
            TenantRule::Permit { id, model } => format!(
                "permit if {{ input.principal.id == \"u{id}\"; input.action == \"predict\"; input.resource == \"m{model}\" }}"
            ),
        }
    }
}

/// `n` tenant rules as one Rego module with Cedar's semantics: allowed when some permit matches and no forbid.
pub fn rego_module(n: usize) -> String {
    let mut text =
        String::from("package gatehouse\n\ndefault allow := false\n\nallow if {\n  permit\n  not forbid\n}\n\n");
    for rule in tenant_rules(n) {
        text.push_str(&rule.rego());
        text.push('\n');
    }
    text
}

/// What [`load_at_rate`] measured: requests/s and latencies of the answered requests, each timed from when it
/// was *due*, not from when it went out, so a server that falls behind is charged for the wait (no coordinated
/// omission).
pub struct OpenLoop {
    pub figures: Figures,
    /// Answers that were not 200.
    pub non2xx: usize,
    /// Requests that failed (connection errors, unreadable answers).
    pub errors: usize,
}

/// Open-loop load: POSTs `body` to `http://addr{path}` at `rate` requests/s for `secs` seconds (after one
/// second of the same load, not counted), evenly spaced whatever the answers' pace, bearer tokens taken in
/// turn. A thread sleeps to each request's due time (sub-millisecond) and queues it; `conns` keep-alive
/// connections take queued requests in turn, so the load arrives as a steady stream rather than in the bursts
/// a millisecond-tick pacer (wrk's `delay`) makes. HTTP/1.1 is written and read by hand (the answer's
/// `Content-Length` or chunked body), a few microseconds per request, so the generator stays light beside the
/// server on a small machine. Run it on a current-thread runtime inside a `LocalSet`.
pub async fn load_at_rate(
    addr: std::net::SocketAddr,
    path: &str,
    tokens: Arc<Vec<String>>,
    body: &'static str,
    rate: f64,
    secs: f64,
    conns: usize,
) -> OpenLoop {
    use std::cell::RefCell;
    use std::rc::Rc;
    const WARMUP: f64 = 1.0;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((WARMUP + secs) * rate) as u64;
    let warmup = (WARMUP * rate) as u64;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let queue = Rc::new(tokio::sync::Mutex::new(rx));
    let tally = Rc::new(RefCell::new((Vec::new(), 0usize, 0usize)));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (queue, tally, tokens, head) = (queue.clone(), tally.clone(), tokens.clone(), head.clone());
        handles.push(tokio::task::spawn_local(async move {
            let mut conn: Option<tokio::net::TcpStream> = None;
            let (mut req, mut buf) = (Vec::new(), Vec::new());
            loop {
                let job = { queue.lock().await.recv().await };
                let Some((i, due)) = job else { break };
                req.clear();
                req.extend_from_slice(head.as_bytes());
                if !tokens.is_empty() {
                    req.extend_from_slice(b"authorization: Bearer ");
                    req.extend_from_slice(tokens[i as usize % tokens.len()].as_bytes());
                    req.extend_from_slice(b"\r\n");
                }
                req.extend_from_slice(b"\r\n");
                req.extend_from_slice(body.as_bytes());
                let reused = conn.is_some();
                let mut status = exchange(&mut conn, addr, &req, &mut buf).await;
                if status.is_err() {
                    conn = None;
                    // A server closes idle or well-used keep-alive connections (nginx after 1,000 requests):
                    // once more on a new connection, as HTTP clients do.
                    if reused {
                        status = exchange(&mut conn, addr, &req, &mut buf).await;
                        if status.is_err() {
                            conn = None;
                        }
                    }
                }
                let took = due.elapsed();
                if i >= warmup {
                    let mut t = tally.borrow_mut();
                    match status {
                        Ok(code) => {
                            t.1 += usize::from(code != 200);
                            t.0.push(took);
                        }
                        Err(_) => t.2 += 1,
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    pacer.join().unwrap();
    let (lat, non2xx, errors) = Rc::try_unwrap(tally).ok().unwrap().into_inner();
    OpenLoop { figures: figures(lat, secs), non2xx, errors }
}

/// One request on `conn` (connected first if needed) and its whole answer read: the status code.
async fn exchange(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    use crate::raw_http::{bad, content_length, header, read_head, read_to};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if conn.is_none() {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let s = conn.as_mut().ok_or_else(|| bad("no connection"))?;
    s.write_all(req).await?;
    buf.clear();
    let (head_end, head) = read_head(s, buf).await?;
    let status: u16 = head.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no status"))?;
    if header(&head, "content-length").is_some() {
        read_to(s, buf, head_end + content_length(&head)?).await?;
    } else if header(&head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut at = head_end;
        loop {
            // A chunk: size line, data, CRLF; the last has size 0 and ends with an empty line.
            let line_end = loop {
                if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    break at + p;
                }
                if s.read_buf(buf).await? == 0 {
                    return Err(bad("closed in a chunk size"));
                }
            };
            let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(|_| bad("chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            let end = line_end + 2 + size + 2;
            read_to(s, buf, end).await?;
            at = end;
            if size == 0 {
                break;
            }
        }
    } else if status != 204 && status != 304 {
        return Err(bad("an answer without a length"));
    }
    Ok(status)
}
