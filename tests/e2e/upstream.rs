//! The upstream connection pool (`gatehouse_host::upstream`) against raw loopback servers whose connection
//! handling the test controls: reuse, upstreams that close idle connections, concurrency, and failures.

use bytes::Bytes;
use gatehouse_host::upstream::{UpstreamError, Upstreams};
use gatehouse_tests::raw_http::{content_length, read_head, read_to};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How a test server treats a connection after answering.
#[derive(Clone, Copy)]
enum After {
    KeepAlive,
    /// Closes the socket 20 ms after one answer without saying so (no `Connection: close`), as servers do
    /// when their idle timeout strikes.
    SilentClose,
    /// Reads the request and closes without answering.
    NoAnswer,
}

struct Server {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    /// Ends the body of a request to `/hold` (a chunked answer whose last chunk waits for this).
    release: Arc<tokio::sync::Notify>,
}

async fn server(after: After) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let release = Arc::new(tokio::sync::Notify::new());
    let (c, r, h, rel) = (connections.clone(), requests.clone(), heads.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(connection(stream, after, r.clone(), h.clone(), rel.clone()));
        }
    });
    Server { addr, connections, requests, heads, release }
}

async fn connection(
    mut s: TcpStream,
    after: After,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: a head, then Content-Length bytes.
        let Ok((head_end, head)) = read_head(&mut s, &mut buf).await else { return };
        let len = content_length(&head).unwrap();
        if read_to(&mut s, &mut buf, head_end + len).await.is_err() {
            return;
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let hold = head.starts_with("POST /hold");
        heads.lock().unwrap().push(head);
        if let After::NoAnswer = after {
            return;
        }
        if hold {
            let first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            if s.write_all(first).await.is_err() {
                return;
            }
            release.notified().await;
            if s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.is_err() {
                return;
            }
            continue;
        }
        let answer = format!("{{\"n\": {n}, \"echo\": {}}}", String::from_utf8_lossy(&body));
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if let After::SilentClose = after {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return;
        }
    }
}

fn request(addr: std::net::SocketAddr, body: &'static str) -> http::Request<Full<Bytes>> {
    request_to(addr, "/v1/models/m:predict?x=1", body)
}

fn request_to(addr: std::net::SocketAddr, path: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn send(pool: &Upstreams, addr: std::net::SocketAddr) -> Result<serde_json::Value, UpstreamError> {
    let res = pool.send(request(addr, "[1]")).await?;
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok(serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn one_connection_serves_requests_in_turn_with_origin_form_and_host() {
    let s = server(After::KeepAlive).await;
    let pool = Upstreams::new();
    for i in 0..20 {
        let v = send(&pool, s.addr).await.unwrap();
        assert_eq!(v["n"], i);
        assert_eq!(v["echo"], serde_json::json!([1]));
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);
    let head = s.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /v1/models/m:predict?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("host: {}\r\n", s.addr)), "{head}");
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let s = server(After::SilentClose).await;
    let pool = Upstreams::new();
    for _ in 0..10 {
        send(&pool, s.addr).await.unwrap();
        // The upstream closes the idle connection meanwhile: the next request must go on a new one. (A close
        // that crosses a request already written cannot be told from a failure after the upstream read it;
        // such a request is not resent, as no client may resend a POST that may have been processed.)
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    assert_eq!(s.requests.load(Ordering::SeqCst), 10);
    assert_eq!(s.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn concurrent_requests_get_their_own_connections_which_are_then_reused() {
    let s = server(After::KeepAlive).await;
    let pool = Arc::new(Upstreams::new());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (pool, addr) = (pool.clone(), s.addr);
        tasks.push(tokio::spawn(async move { send(&pool, addr).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let opened = s.connections.load(Ordering::SeqCst);
    assert!((1..=8).contains(&opened), "{opened}");
    for _ in 0..20 {
        send(&pool, s.addr).await.unwrap();
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), opened, "sequential requests reuse idle connections");
}

#[tokio::test]
async fn a_response_body_still_streaming_keeps_its_connection_busy() {
    let s = server(After::KeepAlive).await;
    let pool = Upstreams::new();
    let first = pool.send(request_to(s.addr, "/hold", "[1]")).await.unwrap();
    // The first body has not ended: the next request must not be queued behind it.
    let second = tokio::time::timeout(std::time::Duration::from_secs(5), send(&pool, s.addr)).await;
    assert_eq!(second.expect("queued behind a streaming response").unwrap()["n"], 1);
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    s.release.notify_one();
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"firstlast");
    // Both connections are idle and ready again.
    for _ in 0..4 {
        send(&pool, s.addr).await.unwrap();
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_are_told_apart_and_a_sent_request_is_not_repeated() {
    let pool = Upstreams::new();
    // Nothing listens on this port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    assert!(matches!(send(&pool, closed).await, Err(UpstreamError::Connect)));
    let s = server(After::NoAnswer).await;
    assert!(matches!(send(&pool, s.addr).await, Err(UpstreamError::Broken)));
    assert_eq!(s.requests.load(Ordering::SeqCst), 1, "a request that reached the upstream is sent once");
    let bad = http::Request::post("/relative").body(Full::new(Bytes::new())).unwrap();
    assert!(matches!(pool.send(bad).await, Err(UpstreamError::BadUrl)));
}
