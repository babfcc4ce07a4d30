//! Performs the reads and HTTP calls of the engine's credential flows, one flow at a time per credential:
//! requests that need the same missing credential wait for the flow under way and share its result.

use crate::client::HttpClient;
use bytes::Bytes;
use gatehouse_engine::credentials::{Credential, Fed, Flow, HttpCall, HttpReply, Need, SecretSource};
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Outcome = Result<Arc<Credential>, String>;
type Cell = Arc<tokio::sync::OnceCell<Outcome>>;

/// Flows under way, by credential key.
#[derive(Default)]
pub struct Flights {
    under_way: Mutex<HashMap<String, Cell>>,
}

impl Flights {
    /// Obtains the credential of `flow`, joining a flow already under way for the same key.
    pub async fn obtain(&self, client: &HttpClient, flow: Flow) -> Outcome {
        let key = flow.key().to_owned();
        let cell: Option<Cell> = self.under_way.lock().ok().map(|mut m| Arc::clone(m.entry(key.clone()).or_default()));
        let Some(cell) = cell else { return drive(client, flow).await };
        let outcome = cell.get_or_init(|| drive(client, flow)).await.clone();
        if let Ok(mut m) = self.under_way.lock()
            && m.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            m.remove(&key);
        }
        outcome
    }
}

/// Runs a flow to its end.
pub async fn drive(client: &HttpClient, mut flow: Flow) -> Outcome {
    let mut need = flow.start();
    loop {
        need = match need {
            Need::Done => break,
            Need::Read(source) => flow.resume(Fed::Read(read_secret(&source).await)),
            Need::Http(call) => flow.resume(Fed::Http(send(client, call).await)),
        };
    }
    flow.outcome().unwrap_or_else(|| Err("the credential flow ended without an outcome".into()))
}

async fn read_secret(source: &SecretSource) -> Result<String, String> {
    match source {
        SecretSource::File(path) => {
            tokio::fs::read_to_string(path).await.map(|s| s.trim().to_owned()).map_err(|e| format!("{path}: {e}"))
        }
        SecretSource::Env(name) => std::env::var(name)
            .map(|s| s.trim().to_owned())
            .map_err(|_| format!("environment variable {name} is not set")),
    }
}

/// Sends a token-endpoint call; the error never repeats the request (its body holds secrets).
async fn send(client: &HttpClient, call: HttpCall) -> Result<HttpReply, String> {
    let host = call.url.split('/').nth(2).unwrap_or("?").to_owned();
    let mut builder = http::Request::builder().method(call.method.as_str()).uri(&call.url);
    for (n, v) in &call.headers {
        builder = builder.header(n, v);
    }
    let req = builder.body(Full::new(Bytes::from(call.body))).map_err(|_| format!("bad request to {host}"))?;
    let work = async {
        let res = client.request(req).await.map_err(|e| {
            if e.is_connect() { format!("cannot connect to {host}") } else { format!("{host} broke the connection") }
        })?;
        let status = res.status().as_u16();
        let body = Limited::new(res.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|_| format!("unreadable answer from {host}"))?
            .to_bytes()
            .to_vec();
        Ok(HttpReply { status, body })
    };
    tokio::time::timeout(Duration::from_millis(call.timeout_ms), work)
        .await
        .map_err(|_| format!("{host} did not answer in {} ms", call.timeout_ms))?
}
