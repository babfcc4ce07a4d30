//! Purpose: put Gatehouse in front of every route of an axum app that is not its own: the app keeps
//! `/healthz`, and everything else goes through authentication, Cedar and forwarding. Uses the demo gateway.
//!
//! Run: `cargo run -p gatehouse-host --example embed_axum` then, in another terminal,
//! `TOKEN=$(./target/debug/gatehouse token --sub alice --groups data-scientists --listen 127.0.0.1:3001)` and
//! `curl -X POST localhost:3001/v1/models/demo:predict -H "authorization: Bearer $TOKEN" -d '{}'`.

use axum::Router;
use axum::routing::get;
use gatehouse_host::demo;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    let addr = listener.local_addr()?;
    let gateway = Arc::new(demo::gateway(addr).await?).into_service();
    let app = Router::new().route("/healthz", get(|| async { "ok" })).fallback_service(gateway);
    eprintln!("axum app with Gatehouse embedded on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
