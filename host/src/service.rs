//! Gatehouse as a tower [`Service`](tower_service::Service) over `http::Request`, so hyper, axum and tower
//! stacks can embed it as is.

use crate::gateway::{BoxError, Gateway, ResponseBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The caller's address, as a request extension. Servers that know the peer insert it; without it the Cedar
/// context sees `0.0.0.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// A cloneable [`tower_service::Service`] handle on a [`Gateway`]. It is always ready and never fails:
/// every problem is an HTTP answer.
#[derive(Clone)]
pub struct GatewayService {
    gateway: Arc<Gateway>,
}

impl GatewayService {
    /// A service over `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> GatewayService {
        GatewayService { gateway }
    }
}

impl<B> tower_service::Service<Request<B>> for GatewayService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gateway = Arc::clone(&self.gateway);
        let peer =
            req.extensions().get::<ClientAddr>().map_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), |c| c.0);
        Box::pin(async move { Ok(gateway.handle(req, peer).await) })
    }
}
