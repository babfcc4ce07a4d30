//! Embedding: the tower `Service` inside a hyper server, the library's `authorize`, forward-auth in every
//! proxy's dialect, and a real nginx with `auth_request` in front of the backend.

use crate::world;
use bytes::Bytes;
use gatehouse_host::{ClientAddr, Verdict};
use gatehouse_tests::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::time::Duration;
use tower_service::Service;

#[tokio::test]
async fn tower_service_inside_a_hyper_server() {
    let w = world(&["rsa1"], 300).await;
    let svc = w.gw.gateway.clone().into_service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let s = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    svc.clone().call(req)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), s).await;
            });
        }
    });
    let url = format!("http://{addr}/v1/models/demo:predict");
    let ok = post(&url, Some(&w.token("alice", &["data-scientists"])), "{}").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["headers"]["x-gatehouse-subject"], "alice");
    let denied = post(&url, Some(&w.token("bob", &[])), "{}").await;
    assert_eq!(denied.status, 403);
    let a = w.gw.audit_of(ok.header("x-request-id"));
    assert_eq!(a["client_ip"], "127.0.0.1");
}

#[tokio::test]
async fn library_authorize_returns_the_decision() {
    let w = world(&["rsa1"], 300).await;
    let peer = "127.0.0.1:5555".parse().unwrap();
    let ask = |token: String| {
        let (parts, _) = http::Request::post("/v1/models/demo:predict")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts();
        parts
    };
    let parts = ask(w.token("alice", &["data-scientists"]));
    match w.gw.gateway.authorize(&parts, Full::new(Bytes::from_static(b"{}")), peer).await {
        Verdict::Allow { headers } => {
            assert!(headers.contains(&("x-gatehouse-subject".into(), "alice".into())), "{headers:?}");
            assert!(headers.contains(&("x-gatehouse-groups".into(), "data-scientists".into())), "{headers:?}");
        }
        Verdict::Deny(a) => panic!("denied: {a:?}"),
    }
    let parts = ask(w.token("bob", &[]));
    match w.gw.gateway.authorize(&parts, Full::new(Bytes::new()), peer).await {
        Verdict::Deny(a) => assert_eq!(a.status, 403),
        Verdict::Allow { .. } => panic!("bob allowed"),
    }
    // Nothing was forwarded by `authorize`.
    assert!(w.gw.audit().iter().all(|a| a["upstream_status"].is_null()));
}

async fn sub_request<V: AsRef<str>>(url: &str, headers: &[(&str, V)]) -> Reply {
    let mut req = http::Request::get(url);
    for (n, v) in headers {
        req = req.header(*n, v.as_ref());
    }
    let res = client().request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Reply { status, headers, body }
}

#[tokio::test]
async fn forward_auth_in_every_dialect_with_a_decision_cache() {
    let w = world(&["rsa1"], 300).await;
    let alice = format!("Bearer {}", w.token("alice", &["data-scientists"]));
    let bob = format!("Bearer {}", w.token("bob", &[]));
    let auth = w.gw.url("/_gatehouse/auth");
    let nginx = |a: &str| {
        vec![
            ("authorization", a.to_owned()),
            ("x-original-method", "POST".into()),
            ("x-original-uri", "/v1/models/demo:predict".into()),
        ]
    };

    let r = sub_request(&auth, &nginx(&alice)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-gatehouse-subject"), "alice");
    assert_eq!(r.header("x-gatehouse-groups"), "data-scientists");
    let r = sub_request(&auth, &nginx(&bob)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let r = sub_request(&auth, &[("x-original-method", "POST"), ("x-original-uri", "/v1/models/demo:predict")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"gatehouse\"");

    let traefik = [
        ("authorization", alice.as_str()),
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/v1/models/demo:predict"),
        ("x-forwarded-host", "models.example"),
    ];
    assert_eq!(sub_request(&auth, &traefik).await.status, 200);

    let envoy = client()
        .request(
            http::Request::post(w.gw.url("/_gatehouse/ext_authz/v1/models/demo:predict"))
                .header("authorization", &alice)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(envoy.status(), 200);

    // Repeated questions come from the cache; the backend never saw any of this.
    let r = sub_request(&auth, &nginx(&alice)).await;
    assert_eq!(r.status, 200);
    let audit = w.gw.audit();
    assert!(audit.iter().any(|a| a["cached"] == true && a["subject"].is_null() && a["status"] == 200), "{audit:?}");
    assert!(audit.iter().all(|a| a["upstream_status"].is_null()));
    assert!(w.gw.gateway.loaded().engine.cached_decisions() >= 2);

    // A reload (policy change) empties the cache.
    w.gw.gateway.reload(&w.gw.dir.join("gatehouse.toml").display().to_string()).unwrap();
    assert_eq!(w.gw.gateway.loaded().engine.cached_decisions(), 0);
}

/// nginx `auth_request` in front of the backend, with Gatehouse answering the sub-requests. `scripts/test`
/// installs nginx from Debian's packages when it is missing.
#[tokio::test]
async fn nginx_auth_request_in_front_of_the_backend() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
    let nginx = nginx.expect("nginx is not installed: run scripts/test, which installs it");
    let w = world(&["rsa1"], 300).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = w.gw.dir.join("nginx");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        r#"
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_gatehouse_auth;
            auth_request_set $gh_subject $upstream_http_x_gatehouse_subject;
            auth_request_set $gh_groups $upstream_http_x_gatehouse_groups;
            proxy_set_header X-Gatehouse-Subject $gh_subject;
            proxy_set_header X-Gatehouse-Groups $gh_groups;
            proxy_set_header Authorization "";
            proxy_pass http://{backend};
        }}
        location = /_gatehouse_auth {{
            internal;
            proxy_pass http://{gatehouse}/_gatehouse/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}
    }}
}}
"#,
        dir = dir.display(),
        backend = w.backend.addr,
        gatehouse = w.gw.addr,
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = std::process::Command::new(nginx)
        .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/models/demo:predict");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "nginx did not start: {}", std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default());

    let ok = post(&url, Some(&w.token("alice", &["data-scientists"])), r#"{"instances": [1]}"#).await;
    let denied = post(&url, Some(&w.token("bob", &[])), "{}").await;
    let anonymous = post(&url, None, "{}").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = &ok.json()["headers"];
    assert_eq!(seen["x-gatehouse-subject"], "alice", "nginx injected the identity upstream");
    assert_eq!(seen["x-gatehouse-groups"], "data-scientists");
    assert!(seen.get("authorization").is_none());
    assert_eq!(ok.json()["body"], json!({"instances": [1]}));
    assert_eq!(denied.status, 403);
    assert_eq!(anonymous.status, 401);
}
