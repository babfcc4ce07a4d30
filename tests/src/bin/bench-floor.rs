//! The floor of Gatehouse's HTTP stack, for `bench/run`: the native host's server shape (one single-threaded
//! tokio runtime per worker, connections handed out in turn, hyper's HTTP/1 server) and its upstream pool
//! (`gatehouse_host::upstream::Upstreams`), forwarding every request as it came, with no engine, no token check,
//! no policy and no plugin. What Gatehouse costs beyond this is its own work; what this costs beyond nginx is
//! the stack's.
//!
//! `bench-floor LISTEN BACKEND` (e.g. `127.0.0.1:18006 127.0.0.1:18001`); runs until killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use gatehouse_host::upstream::Upstreams;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listener = std::net::TcpListener::bind(&args[1]).unwrap();
    let backend = Arc::new(format!("http://{}", args[2]));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let backend = Arc::clone(&backend);
            std::thread::spawn(move || {
                rt.block_on(async move {
                    let upstreams = Arc::new(Upstreams::new());
                    while let Some(stream) = rx.recv().await {
                        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
                        let (upstreams, backend) = (Arc::clone(&upstreams), Arc::clone(&backend));
                        tokio::spawn(async move {
                            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                let (upstreams, backend) = (Arc::clone(&upstreams), Arc::clone(&backend));
                                async move { forward(&upstreams, &backend, req).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            });
            tx
        })
        .collect();
    for (i, stream) in listener.incoming().enumerate() {
        let Ok(stream) = stream else { continue };
        stream.set_nonblocking(true).unwrap();
        stream.set_nodelay(true).unwrap();
        workers[i % workers.len()].send(stream).unwrap();
    }
}

async fn forward(
    upstreams: &Upstreams,
    backend: &str,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = http::Request::builder().method(parts.method).uri(format!("{backend}{path}"));
    for (n, v) in &parts.headers {
        if n != http::header::HOST {
            up = up.header(n, v);
        }
    }
    let sent = match up.body(Full::new(body)) {
        Ok(up) => upstreams.send(up).await.ok(),
        Err(_) => None,
    };
    Ok(match sent {
        Some(res) => res.map(|b| b.map_err(BoxError::from).boxed()),
        None => {
            let empty = Full::new(bytes::Bytes::new()).map_err(|never| match never {}).boxed();
            let mut res = http::Response::new(empty);
            *res.status_mut() = http::StatusCode::BAD_GATEWAY;
            res
        }
    })
}
