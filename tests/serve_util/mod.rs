//! Helpers for the server tests: the router with the fake backend (driven without a socket through
//! `oneshot`), a server on 127.0.0.1:0, and a raw HTTP/1.1 client over a TCP stream, so tests see the
//! exact bytes (SSE framing, chunk boundaries) and can drop the connection at any point.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tower::ServiceExt;
use zhinao::serve::fake::{self, FakeConfig, FakeStats};
use zhinao::serve::{router, App, Loader, ServeConfig};

/// A config for tests: quiet, small keep-alive.
pub fn test_config() -> ServeConfig {
    ServeConfig { log_requests: false, keep_alive: Duration::from_millis(200), ..Default::default() }
}

/// The router over the fake backend, its app and counters; waits until the fake models are loaded
/// when `wait` is set.
pub async fn fake_router(cfg: ServeConfig, fc: FakeConfig, wait: bool) -> (Router, Arc<App>, Arc<FakeStats>) {
    let stats = Arc::new(FakeStats::default());
    let app = App::new(cfg);
    app.start(fake::loader(fc, stats.clone()), |_| {}, |_| {}).expect("engine thread");
    let r = router(app.clone());
    if wait {
        let t0 = Instant::now();
        while call(&r, "GET", "/health", &[], b"").await.0 != StatusCode::OK {
            assert!(t0.elapsed() < Duration::from_secs(10), "fake models never became ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (r, app, stats)
}

/// One request through the router without a socket: (status, headers, body). A POST without a
/// `content-type` in `headers` is sent as `application/json`.
pub async fn call(
    r: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(path);
    if method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Body::from(body.to_vec())).expect("request");
    let resp = r.clone().oneshot(req).await.expect("router is infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.expect("body");
    (parts.status, parts.headers, bytes.to_vec())
}

/// `call` with a JSON body, parsing a JSON answer.
pub async fn post_json(r: &Router, path: &str, body: &serde_json::Value) -> (StatusCode, serde_json::Value) {
    let (s, h, b) = call(r, "POST", path, &[("content-type", "application/json")], body.to_string().as_bytes()).await;
    (s, json_body(&h, &b))
}

/// The body as JSON, asserting the content type says so.
pub fn json_body(h: &axum::http::HeaderMap, b: &[u8]) -> serde_json::Value {
    let ct = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}, body {}", String::from_utf8_lossy(b));
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

/// Assert an OpenAI-shaped error with this status; returns the `error` object.
pub fn assert_error(status: StatusCode, v: &serde_json::Value, want: u16) -> serde_json::Value {
    assert_eq!(status.as_u16(), want, "{v}");
    let e = v.get("error").unwrap_or_else(|| panic!("no error object: {v}"));
    let w: async_openai::error::WrappedError = serde_json::from_value(v.clone()).expect("OpenAI error shape");
    assert!(!w.error.message.is_empty());
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {v}");
    }
    e.clone()
}

// ---- a server on loopback -----------------------------------------------------------------------

pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<Result<(), String>>,
}

impl Server {
    /// Send the shutdown signal and wait (bounded) for `serve` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.handle).await.expect("server did not stop").expect("join")
    }
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `serve` on 127.0.0.1:0 with `loader`; returns once listening (not necessarily loaded).
pub async fn spawn_server(cfg: ServeConfig, loader: Loader) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(zhinao::serve::serve(
        cfg,
        listener,
        loader,
        async move {
            let _ = rx.await;
        },
        |_| {},
    ));
    Server { addr, shutdown: Some(tx), handle }
}

/// Poll `/health` until 200 (bounded).
pub async fn wait_healthy(addr: SocketAddr, limit: Duration) {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http(addr, "GET", "/health", &[], b"").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(t0.elapsed() < limit, "server not healthy within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- a raw HTTP/1.1 client ----------------------------------------------------------------------

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// An open response whose body is read incrementally.
pub struct Open {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Body bytes left (Content-Length) when not chunked.
    left: Option<usize>,
    /// Decoded body bytes not yet returned as events.
    buf: Vec<u8>,
    eof: bool,
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Open> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.push_str("Content-Type: application/json\r\n");
        }
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut hs = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = hs.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let left = hs.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
    Ok(Open { status, headers: hs, reader, chunked, left, buf: Vec::new(), eof: false })
}

impl Open {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Read the next piece of the body into `buf`; false at the end.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                self.eof = true;
                return Ok(false);
            }
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk size {line:?}")))?;
            if n == 0 {
                self.eof = true;
                return Ok(false);
            }
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk).await?;
            assert_eq!(&chunk[n..], b"\r\n", "chunk framing");
            self.buf.extend_from_slice(&chunk[..n]);
            return Ok(true);
        }
        let mut tmp = vec![0; 8192];
        let want = self.left.map_or(tmp.len(), |l| l.min(tmp.len()));
        if want == 0 {
            self.eof = true;
            return Ok(false);
        }
        let n = self.reader.read(&mut tmp[..want]).await?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        if let Some(l) = &mut self.left {
            *l -= n;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(true)
    }

    /// The next SSE event's raw bytes (without the blank line that ends it); None at the end.
    pub async fn next_event(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let ev = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(ev);
            }
            match self.fill().await {
                Ok(true) => {}
                _ => {
                    assert!(
                        self.buf.is_empty(),
                        "trailing bytes after the last event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }

    /// The rest of the body.
    pub async fn rest(mut self) -> std::io::Result<Vec<u8>> {
        while self.fill().await? {}
        Ok(self.buf)
    }
}

/// A whole request and response.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let o = send(addr, method, path, headers, body).await?;
    let (status, headers) = (o.status, o.headers.clone());
    Ok(Resp { status, headers, body: o.rest().await? })
}

/// Start a request and return once the head has arrived.
pub async fn open(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Open {
    send(addr, "POST", path, &[], body.to_string().as_bytes()).await.expect("request")
}

/// Every event of a stream, each checked to be `data: ...` UTF-8 (comments skipped); the last must
/// be `[DONE]` and is not returned.
pub async fn sse_events(mut o: Open) -> Vec<serde_json::Value> {
    assert_eq!(o.status, 200);
    assert_eq!(o.header("content-type"), Some("text/event-stream"));
    let mut out = Vec::new();
    let mut done = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(60), o.next_event()).await.expect("stream stalled") {
        let text = std::str::from_utf8(&ev).expect("every event is valid UTF-8");
        if text.starts_with(':') {
            continue;
        }
        assert!(!done, "an event after [DONE]: {text}");
        let data = text.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {text:?}"));
        assert!(!data.contains('\n'), "one line per event: {text:?}");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        out.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}")));
    }
    assert!(done, "the stream did not end with [DONE]");
    out
}

/// The `/metrics` value of an unlabelled metric.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = http(addr, "GET", "/metrics", &[], b"").await.expect("metrics");
    let text = String::from_utf8(r.body).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Wait (bounded) until `metric(name) == want`.
pub async fn wait_metric(addr: SocketAddr, name: &str, want: f64, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let v = metric(addr, name).await;
        if v == want {
            return;
        }
        assert!(t0.elapsed() < limit, "{name} = {v}, expected {want} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
