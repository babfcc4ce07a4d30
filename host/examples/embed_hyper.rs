//! Purpose: embed Gatehouse in a plain hyper server through its tower `Service`, passing the peer address as
//! a `ClientAddr` extension. Uses the demo gateway (dev issuer, demo backend, example policies).
//!
//! Run: `cargo run -p gatehouse-host --example embed_hyper` then, in another terminal,
//! `TOKEN=$(./target/debug/gatehouse token --sub alice --groups data-scientists --listen 127.0.0.1:3000)` and
//! `curl -X POST localhost:3000/v1/models/demo:predict -H "authorization: Bearer $TOKEN" -d '{}'`.

use gatehouse_host::{ClientAddr, demo};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tower_service::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let addr = listener.local_addr()?;
    let gateway = Arc::new(demo::gateway(addr).await?).into_service();
    eprintln!("hyper server with Gatehouse embedded on http://{addr}");
    loop {
        let (stream, peer) = listener.accept().await?;
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                gateway.clone().call(req)
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
