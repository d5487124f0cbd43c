//! The server's defences, over raw TCP and through the router: slow senders hold no admission slot
//! and are closed after the header/body timeouts, the connection cap, a client that stops reading a
//! stream is dropped and its generation cancelled, the `Host` check (DNS rebinding), JSON-only POST
//! routes (cross-site "simple requests"), the API key's scheme and trimming, `/health` following
//! the engine (its thread dead, stuck in one step, or its device lost), and embedding batches sized
//! by padded tokens that drop a disconnected request's rows.

mod serve_util;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use serve_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zhinao::serve::fake::{self, FakeConfig, FakeStats, CHAT};
use zhinao::serve::ServeConfig;

async fn fake_server(cfg: ServeConfig, fc: FakeConfig) -> (Server, Arc<FakeStats>) {
    let stats = Arc::new(FakeStats::default());
    let s = spawn_server(cfg, fake::loader(fc, stats.clone())).await;
    wait_healthy(s.addr, Duration::from_secs(10)).await;
    (s, stats)
}

fn chat_body(content: &str) -> Value {
    json!({ "model": CHAT, "messages": [{ "role": "user", "content": content }] })
}

/// Everything the server sends until it closes the connection (bounded by `limit`; panics if the
/// connection is still open then).
async fn read_until_closed(s: &mut TcpStream, limit: Duration, what: &str) -> String {
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "{what}: the server did not close the connection within {limit:?}");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_hold_no_slot_and_are_closed_after_the_header_and_body_timeouts() {
    let cfg = ServeConfig {
        max_concurrent: 2,
        header_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(800),
        ..test_config()
    };
    let (server, _) = fake_server(cfg, FakeConfig::default()).await;
    let addr = server.addr;
    // Four clients announce 100 bytes of body and send one; one sends half a request head.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        slow.push(s);
    }
    let mut half_head = TcpStream::connect(addr).await.expect("connect");
    half_head.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n").as_bytes()).await.expect("write");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // max_concurrent is 2, yet a whole request is admitted: the slots are taken after the body.
    let r =
        http(addr, "POST", "/v1/chat/completions", &[], chat_body("hi").to_string().as_bytes()).await.expect("chat");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The slow bodies get 408 and the connection closes; the half head is closed too.
    for mut s in slow {
        let text = read_until_closed(&mut s, Duration::from_secs(10), "slow body").await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("did not arrive within"), "{text}");
    }
    read_until_closed(&mut half_head, Duration::from_secs(10), "half a head").await;
    assert!(t0.elapsed() >= Duration::from_millis(500), "closed before the timeout: {:?}", t0.elapsed());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_do_not_starve_health() {
    let cfg = ServeConfig { max_connections: 2, header_timeout: Duration::from_millis(1500), ..test_config() };
    let (server, _) = fake_server(cfg, FakeConfig::default()).await;
    let addr = server.addr;
    // wait_healthy's connections are closed by now (Connection: close), so two idle ones fill the cap.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let mut health = tokio::spawn(async move { http(addr, "GET", "/health", &[], b"").await });
    // Beyond the cap the request waits in the backlog ...
    assert!(
        tokio::time::timeout(Duration::from_millis(400), &mut health).await.is_err(),
        "a third connection was served while two were open (max_connections 2)"
    );
    // ... until the idle connections time out, well within the limit.
    let r = tokio::time::timeout(Duration::from_secs(10), health).await.expect("health starved").expect("task");
    assert_eq!(r.expect("health").status, 200);
    assert!(t0.elapsed() < Duration::from_secs(8));
    for mut s in idle {
        read_until_closed(&mut s, Duration::from_secs(5), "idle connection").await;
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_dropped_and_its_generation_cancelled() {
    let cfg = ServeConfig { write_timeout: Duration::from_millis(300), ..test_config() };
    // A long generation (about 30 s at 100 µs a token), far longer than the test waits.
    let n = 200_000;
    let fc = FakeConfig {
        reply: "数".repeat(n),
        n_ctx: 2 * n,
        token_delay: Duration::from_micros(100),
        ..Default::default()
    };
    let (server, stats) = fake_server(cfg, fc).await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock.connect(server.addr).await.expect("connect");
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(n);
    let body = body.to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body.as_bytes()).await.expect("write");
    let mut first = [0u8; 512];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await.expect("head").expect("read");
    assert!(first[..got].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..got]));
    // Stop reading: once the buffers are full, the write blocks, times out, and the job is cancelled.
    let t0 = Instant::now();
    while stats.cancelled.load(Ordering::SeqCst) == 0 {
        let tokens = stats.tokens.load(Ordering::SeqCst);
        assert!(t0.elapsed() < Duration::from_secs(20), "still generating for a client that reads nothing: {tokens}");
        assert!(tokens < n, "the generation ran to its end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_metric(server.addr, "zhinao_requests_in_flight", 0.0, Duration::from_secs(5)).await;
    drop(s);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_or_allowed_host_names_are_served() {
    let cfg = ServeConfig { host_check: true, allowed_hosts: vec!["Box.LAN".into()], ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    let ok = [
        "localhost",
        "localhost:8360",
        "LOCALHOST.",
        "127.0.0.1",
        "127.0.0.1:8360",
        "127.9.8.7:1",
        "[::1]",
        "[::1]:8360",
        "box.lan:80",
    ];
    for host in ok {
        let (s, _, b) = call(&r, "GET", "/health", &[("host", host)], b"").await;
        assert_eq!(s, StatusCode::OK, "{host}: {}", String::from_utf8_lossy(&b));
        let body = chat_body("a").to_string();
        let (s, _, _) = call(&r, "POST", "/v1/chat/completions", &[("host", host)], body.as_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{host}");
    }
    let refused = [
        "evil.example",
        "evil.example:8360",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "[::2]:8360",
        "0.0.0.0:8360",
        "192.168.1.2",
        "localhost:http",
        "[::1",
        "box.lan.evil.example",
    ];
    for host in refused {
        for (method, path) in [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")] {
            let body = chat_body("a").to_string();
            let (s, h, b) = call(&r, method, path, &[("host", host)], body.as_bytes()).await;
            let e = assert_error(s, &json_body(&h, &b), 403);
            assert_eq!(e["code"], "host_not_allowed", "{host} {path}");
        }
    }
    // `*` turns the check off (behind a proxy that checks the name itself).
    let cfg = ServeConfig { host_check: true, allowed_hosts: vec!["*".into()], ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    assert_eq!(call(&r, "GET", "/health", &[("host", "evil.example")], b"").await.0, StatusCode::OK);
    // `serve` turns the check on for a loopback bind: a rebinding page's own name is refused.
    let (server, _) = fake_server(test_config(), FakeConfig::default()).await;
    let r = http(server.addr, "GET", "/health", &[("Host", "attacker.example:8360")], b"").await.expect("health");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let r = http(server.addr, "GET", "/health", &[("Host", "localhost:8360")], b"").await.expect("health");
    assert_eq!(r.status, 200);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_routes_refuse_other_content_types() {
    let (r, _, _) = fake_router(test_config(), FakeConfig::default(), true).await;
    let chat = chat_body("a").to_string();
    let routes = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/rerank",
        "/rerank",
        "/tokenize",
        "/detokenize",
    ];
    // What a cross-site page may send without a CORS preflight, and a missing type.
    for ct in ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data", ""]
    {
        for path in routes {
            let (s, h, b) = call(&r, "POST", path, &[("content-type", ct)], chat.as_bytes()).await;
            let e = assert_error(s, &json_body(&h, &b), 415);
            assert_eq!(e["code"], "unsupported_media_type", "{ct} {path}");
        }
    }
    let req =
        axum::http::Request::post("/v1/chat/completions").body(axum::body::Body::from(chat.clone())).expect("req");
    let resp = tower::ServiceExt::oneshot(r.clone(), req).await.expect("router");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content type");
    for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"] {
        let (s, _, b) = call(&r, "POST", "/v1/chat/completions", &[("content-type", ct)], chat.as_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{ct}: {}", String::from_utf8_lossy(&b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_the_configured_key_trimmed() {
    let cfg = ServeConfig { api_key: Some(" s3cret\n".into()), ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    let body = chat_body("a").to_string();
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer  s3cret ", "bEaReR s3cret"] {
        let (s, _, b) = call(&r, "POST", "/v1/chat/completions", &[("authorization", auth)], body.as_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{auth:?}: {}", String::from_utf8_lossy(&b));
    }
    let (s, _, _) = call(&r, "POST", "/v1/chat/completions", &[("x-api-key", "s3cret")], body.as_bytes()).await;
    assert_eq!(s, StatusCode::OK);
    for auth in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer s3cret x", "Bearer"] {
        let (s, _, _) = call(&r, "POST", "/v1/chat/completions", &[("authorization", auth)], body.as_bytes()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
}

/// Poll `/health` until its answer satisfies `want` (bounded).
async fn health_until(r: &axum::Router, limit: Duration, want: impl Fn(StatusCode, &str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let (s, _, b) = call(r, "GET", "/health", &[], b"").await;
        let text = String::from_utf8_lossy(&b).into_owned();
        if want(s, &text) {
            return text;
        }
        assert!(t0.elapsed() < limit, "/health still answers {s} {text} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_once_the_engine_thread_has_died() {
    let fc = FakeConfig { engine_exits: true, ..Default::default() };
    let (r, _, _) = fake_router(test_config(), fc, false).await;
    let text =
        health_until(&r, Duration::from_secs(10), |s, t| s == StatusCode::SERVICE_UNAVAILABLE && t.contains("engine"))
            .await;
    assert!(text.contains("stopped"), "{text}");
    // And a request is refused at once, not left waiting for an engine that is gone.
    let (s, v) = tokio::time::timeout(Duration::from_secs(5), post_json(&r, "/v1/chat/completions", &chat_body("a")))
        .await
        .expect("a request to a dead engine hung");
    assert_error(s, &v, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_after_the_gpu_device_is_lost() {
    let fc = FakeConfig { lose_device_on: Some("LOSE".into()), ..Default::default() };
    let (r, _, _) = fake_router(test_config(), fc, true).await;
    let (s, v) = post_json(&r, "/v1/chat/completions", &chat_body("a")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = post_json(&r, "/v1/chat/completions", &chat_body("LOSE")).await;
    let e = assert_error(s, &v, 503);
    assert!(e["message"].as_str().is_some_and(|m| m.contains("device was lost")), "{v}");
    let (s, _, b) = call(&r, "GET", "/health", &[], b"").await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("device was lost"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_an_engine_step_stalls_and_200_after() {
    let cfg = ServeConfig { stall_timeout: Duration::from_millis(300), ..test_config() };
    let fc = FakeConfig { hang_on: Some("HANG".into()), hang: Duration::from_secs(3), ..Default::default() };
    let (r, _, stats) = fake_router(cfg, fc, true).await;
    // A long generation that makes progress at every token is not a stall.
    let mut b = chat_body("a");
    b["max_tokens"] = json!(30);
    let slow = FakeConfig { token_delay: Duration::from_millis(40), ..Default::default() };
    let (r2, _, _) =
        fake_router(ServeConfig { stall_timeout: Duration::from_millis(300), ..test_config() }, slow, true).await;
    let (s, _) = post_json(&r2, "/v1/chat/completions", &b).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(call(&r2, "GET", "/health", &[], b"").await.0, StatusCode::OK);
    // A step stuck for longer than the stall limit is.
    let r1 = r.clone();
    let stuck = tokio::spawn(async move { post_json(&r1, "/v1/chat/completions", &chat_body("HANG")).await });
    let text = health_until(&r, Duration::from_millis(2800), |s, _| s == StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(text.contains("no progress"), "{text}");
    let (s, v) = stuck.await.expect("task");
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(stats.generations.load(Ordering::SeqCst), 1);
    health_until(&r, Duration::from_secs(2), |s, _| s == StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_calls_are_sized_by_padded_tokens_and_drop_cancelled_rows() {
    // Five one-token texts cost 5 tokens before padding but 5 × 32 after: with a budget of 64 they
    // run as calls of 2, 2 and 1 rows, not one call of 5 (160 padded tokens).
    let cfg = ServeConfig { batch_tokens: 64, ..test_config() };
    let fc = FakeConfig { embed_delay: Duration::from_millis(1000), ..Default::default() };
    let (r, app, stats) = fake_router(cfg, fc, true).await;
    let (s, v) = post_json(&r, "/v1/embeddings", &json!({ "input": ["a", "b", "c", "d", "e"] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(v["data"][4]["embedding"], json!(fake::fake_embedding(&['e' as u32])));
    assert_eq!(*stats.embed_calls.lock().expect("lock"), vec![2, 2, 1]);
    stats.embed_calls.lock().expect("lock").clear();
    // A client that leaves during the first call: its other rows are never run.
    let r1 = r.clone();
    let task =
        tokio::spawn(
            async move { post_json(&r1, "/v1/embeddings", &json!({ "input": ["a", "b", "c", "d", "e"] })).await },
        );
    let t0 = Instant::now();
    while stats.embed_calls.lock().expect("lock").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the embedding call did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    task.abort();
    let _ = task.await;
    let t0 = Instant::now();
    while app.metrics.processing.load(Ordering::SeqCst) != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the batch did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*stats.embed_calls.lock().expect("lock"), vec![2], "rows of a cancelled request ran");
}
