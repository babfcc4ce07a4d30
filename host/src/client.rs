//! The outbound HTTP client (plain HTTP and rustls HTTPS), shared by upstream forwarding and key fetching.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The client type.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds a client that speaks HTTP/1.1 over TCP or TLS (web PKI roots).
pub fn build() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(crate::upstream::IDLE_TIMEOUT).build(connector())
}

/// Opens TCP connections (no Nagle, 5 s to connect), with TLS (web PKI roots) for `https` URLs.
pub fn connector() -> hyper_rustls::HttpsConnector<HttpConnector> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().wrap_connector(http)
}

/// A small document fetched with GET: status, `Cache-Control`, body.
pub struct Fetched {
    /// HTTP status.
    pub status: u16,
    /// The `Cache-Control` header.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// GETs `url` with a deadline and a body cap of 1 MiB.
pub async fn get(client: &HttpClient, url: &str, timeout: Duration) -> Result<Fetched, String> {
    let req = http::Request::get(url)
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad url `{url}`: {e}"))?;
    let work = async {
        let res = client.request(req).await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = res.status().as_u16();
        let cache_control =
            res.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body =
            Limited::new(res.into_body(), 1 << 20).collect().await.map_err(|e| format!("GET {url}: {e}"))?.to_bytes();
        Ok(Fetched { status, cache_control, body })
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| format!("GET {url}: timed out"))?
}
