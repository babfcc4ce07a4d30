//! Forwarding to upstreams: HTTP/1.1 connections kept alive and reused, plain TCP or rustls TLS.
//!
//! One pool per [`Gateway`](crate::Gateway) handle (the server gives each worker thread its own, so a
//! connection is driven by the loop of the thread that uses it). A request takes the most recently used idle
//! connection to its origin that is ready for another request, or opens one; the connection goes back to the
//! pool as soon as the response head arrives, and becomes ready again once that response's body has been read.
//! A request that a reused connection refused before sending a byte (the upstream had closed it) is sent once
//! more on a new connection; a request that was sent is never repeated. Connections idle for longer than
//! [`IDLE_TIMEOUT`] are not reused (an upstream that closes idle connections at about that age would otherwise
//! race us), and at most [`MAX_IDLE`] are kept per origin.
//!
//! Measured against hyper-util's general-purpose pooled client (`client::legacy`), which this replaced on the
//! request path: see the issue notes and `bench/run`.

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tower_service::Service;

/// Idle connections older than this are not reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per origin.
pub const MAX_IDLE: usize = 64;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Sender = SendRequest<Full<Bytes>>;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened (refused, unreachable, TLS handshake failed).
    #[error("cannot connect to the upstream")]
    Connect,
    /// The connection failed after the request was sent, or the response was malformed.
    #[error("the upstream broke the connection")]
    Broken,
    /// The request's URL has no `http`/`https` origin.
    #[error("bad upstream url")]
    BadUrl,
}

/// The pool.
pub struct Upstreams {
    connector: Connector,
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

impl Upstreams {
    /// An empty pool that connects with the same TLS settings as [`crate::client::build`].
    pub fn new() -> Upstreams {
        Upstreams { connector: crate::client::connector(), idle: Mutex::new(HashMap::new()) }
    }

    /// Sends `req` (absolute URL) and returns the response head with its body still streaming.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let (Some(scheme), Some(authority)) = (parts.uri.scheme().cloned(), parts.uri.authority().cloned()) else {
            return Err(UpstreamError::BadUrl);
        };
        let origin = Origin { scheme, authority };
        let target = Uri::from(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        let url = std::mem::replace(&mut parts.uri, target);
        if !parts.headers.contains_key(http::header::HOST) {
            let host = HeaderValue::from_str(host_header(&origin)).map_err(|_| UpstreamError::BadUrl)?;
            parts.headers.insert(http::header::HOST, host);
        }
        let mut req = Request::from_parts(parts, body);
        loop {
            let (mut sender, reused) = match self.checkout(&origin) {
                Some(s) => (s, true),
                None => (self.connect(url.clone()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(origin, sender);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // Refused before a byte was sent: the upstream had closed this idle connection.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Broken),
                },
            }
        }
    }

    /// The most recently used idle connection to `origin` ready for a request; drops closed and stale ones.
    fn checkout(&self, origin: &Origin) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(origin)?;
        let now = Instant::now();
        list.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
        let ready = list.iter().rposition(|i| i.sender.is_ready())?;
        Some(list.swap_remove(ready).sender)
    }

    fn checkin(&self, origin: Origin, sender: Sender) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let list = idle.entry(origin).or_default();
        if list.len() >= MAX_IDLE {
            // Prefer keeping the ones still usable.
            list.retain(|i| !i.sender.is_closed());
            if list.len() >= MAX_IDLE {
                list.remove(0);
            }
        }
        list.push(Idle { sender, since: Instant::now() });
    }

    async fn connect(&self, url: Uri) -> Result<Sender, UpstreamError> {
        let mut connector = self.connector.clone();
        let io = connector.call(url).await.map_err(|_| UpstreamError::Connect)?;
        let (sender, conn) = http1::handshake(io).await.map_err(|_| UpstreamError::Connect)?;
        tokio::spawn(async move {
            // Ends when the upstream closes or every sender for it is dropped.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// `host[:port]`, the port only when it is not the scheme's default (what clients send): the authority
/// without its user information, or its host alone. A slice of the URL, not a new string.
fn host_header(origin: &Origin) -> &str {
    let default = if origin.scheme == Scheme::HTTPS { 443 } else { 80 };
    match origin.authority.port_u16() {
        Some(p) if p != default => {
            let authority = origin.authority.as_str();
            authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port)
        }
        _ => origin.authority.host(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_omits_default_ports() {
        let o = |s: &str, a: &str| Origin { scheme: s.parse().unwrap(), authority: a.parse().unwrap() };
        assert_eq!(host_header(&o("http", "example.com:80")), "example.com");
        assert_eq!(host_header(&o("https", "example.com:443")), "example.com");
        assert_eq!(host_header(&o("http", "127.0.0.1:8080")), "127.0.0.1:8080");
        assert_eq!(host_header(&o("https", "example.com:80")), "example.com:80");
        assert_eq!(host_header(&o("http", "[::1]:9000")), "[::1]:9000");
        assert_eq!(host_header(&o("http", "[::1]:80")), "[::1]");
        assert_eq!(host_header(&o("http", "user:pw@example.com:8080")), "example.com:8080");
        assert_eq!(host_header(&o("https", "user@example.com:443")), "example.com");
        assert_eq!(host_header(&o("http", "example.com")), "example.com");
    }
}
