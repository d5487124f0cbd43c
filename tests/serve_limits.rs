//! The server's request semantics under hostile or unlucky use, over the fake backend (no GPU):
//! rerank preparation stops with its request and its tokenizing work is capped; cached prompt
//! prefixes are shared only within a tenant (API key, `cache_salt`); `/tokenize` pieces are built
//! off the async threads (so `/health` answers meanwhile) and capped; `--max-tokens` clamps; a load
//! error tells clients no local path.

mod serve_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use serve_util::*;
use zhinao::serve::fake::{self, FakeConfig, FakeStats, Gate, CHAT, RERANK};
use zhinao::serve::ServeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_preparation_stops_when_the_request_is_dropped() {
    // 2048 documents at 5 ms each: 10 s of tokenizer work if nothing stops it.
    let fc = FakeConfig { rerank_delay: Duration::from_millis(5), ..Default::default() };
    let (r, _, stats) = fake_router(test_config(), fc, true).await;
    let docs: Vec<String> = (0..2048).map(|i| format!("document {i}")).collect();
    let body = json!({ "model": RERANK, "query": "q", "documents": docs }).to_string();
    let call = call(&r, "POST", "/v1/rerank", &[("content-type", "application/json")], body.as_bytes());
    // The client gives up (its future is dropped, as hyper drops the handler on a disconnect).
    assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err(), "finished too early");
    // Within a few documents the work stops: the count settles far below 2048.
    let t0 = Instant::now();
    let mut last = stats.rerank_prepared.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stats.rerank_prepared.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "rerank preparation goes on after the request was dropped");
        last = now;
    }
    assert!(last < 2048, "all {last} documents were prepared for a request nobody waits for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_tokenizing_work_is_capped() {
    let cfg = ServeConfig { batch_tokens: 1 << 26, ..test_config() };
    let (r, _, stats) = fake_router(cfg, FakeConfig::default(), true).await;
    // A 6 KB query with 2048 documents that begin with a space: each of those is tokenized together
    // with the query, 12 MB in all.
    let query = "q".repeat(6 << 10);
    let docs: Vec<String> = (0..2048).map(|i| format!(" d{i}")).collect();
    let (s, v) = post_json(&r, "/v1/rerank", &json!({ "model": RERANK, "query": query, "documents": docs })).await;
    let e = assert_error(s, &v, 413);
    assert!(e["message"].as_str().unwrap_or("").contains("limit"), "{v}");
    assert_eq!(stats.rerank_prepared.load(Ordering::SeqCst), 0, "refused before any work");
    // The same documents without the leading space cost the query once: served.
    let docs: Vec<String> = (0..2048).map(|i| format!("d{i}")).collect();
    let (s, v) = post_json(&r, "/v1/rerank", &json!({ "model": RERANK, "query": query, "documents": docs })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// `usage.prompt_tokens_details.cached_tokens` of a chat request with these headers and salt.
async fn cached(r: &axum::Router, headers: &[(&str, &str)], salt: Option<&str>) -> u64 {
    let mut body = json!({ "model": CHAT, "max_tokens": 2,
        "messages": [{ "role": "system", "content": "a long secret system prompt" }, { "role": "user", "content": "hi" }] });
    if let Some(s) = salt {
        body["cache_salt"] = json!(s);
    }
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let (s, hd, b) = call(r, "POST", "/v1/chat/completions", &h, body.to_string().as_bytes()).await;
    let v = json_body(&hd, &b);
    assert_eq!(s, StatusCode::OK, "{v}");
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("no cached_tokens: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prefixes_are_shared_only_within_a_tenant() {
    let (r, _, _) = fake_router(test_config(), FakeConfig::default(), true).await;
    // The single-tenant default (no key, no salt) stays fast.
    cached(&r, &[], None).await;
    assert!(cached(&r, &[], None).await > 0);
    // Different salts: the second prefills everything; the same salt reuses.
    assert_eq!(cached(&r, &[], Some("alice")).await, 0);
    assert_eq!(cached(&r, &[], Some("bob")).await, 0);
    assert!(cached(&r, &[], Some("bob")).await > 0);
    // Different API keys (Bearer in any case, or X-Api-Key), likewise.
    assert_eq!(cached(&r, &[("authorization", "Bearer key-one")], None).await, 0);
    assert!(cached(&r, &[("authorization", "bearer key-one")], None).await > 0);
    assert_eq!(cached(&r, &[("x-api-key", "key-two")], None).await, 0);
    assert!(cached(&r, &[("x-api-key", "key-two")], None).await > 0);
    // A key and a salt together are their own tenant.
    assert_eq!(cached(&r, &[("x-api-key", "key-two")], Some("bob")).await, 0);
    // Back to the default tenant: nothing of the others' prompts is reused.
    assert_eq!(cached(&r, &[], None).await, 0);
}

/// A blocking HTTP/1.1 request with `Connection: close` and a read timeout: (status, body).
fn blocking_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_tokenize_builds_pieces() {
    // The pieces of these requests wait on the gate: wherever they are built, that thread is held.
    let gate = Arc::new(Gate::default());
    let fc = FakeConfig { piece_gate: Some(gate.clone()), ..Default::default() };
    let server = spawn_server(test_config(), fake::loader(fc, Arc::new(FakeStats::default()))).await;
    wait_healthy(server.addr, Duration::from_secs(10)).await;
    let addr = server.addr;
    let body = json!({ "content": "x".repeat(1000), "with_pieces": true }).to_string();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || blocking_http(addr, "POST", "/tokenize", &body, Duration::from_secs(60)))
        })
        .collect();
    // Both async worker threads would be held if the pieces were built on them.
    let t0 = Instant::now();
    while gate.waiting.load(Ordering::SeqCst) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the /tokenize requests never reached their pieces");
        std::thread::sleep(Duration::from_millis(5));
    }
    let health =
        tokio::task::spawn_blocking(move || blocking_http(addr, "GET", "/health", "", Duration::from_secs(3))).await;
    gate.open();
    let health = health.expect("join");
    assert!(matches!(health, Ok((200, _))), "/health stalled while /tokenize built pieces: {health:?}");
    for c in clients {
        let (status, body) = c.join().expect("join").expect("tokenize");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["tokens"].as_array().map(Vec::len), Some(1000));
        assert_eq!(v["tokens"][0], json!({ "id": 'x' as u32, "piece": "x" }));
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_pieces_are_capped() {
    let (r, _, _) = fake_router(test_config(), FakeConfig::default(), true).await;
    let text = "y".repeat(MAX_PIECES + 1);
    let (s, v) = post_json(&r, "/tokenize", &json!({ "content": text, "with_pieces": true })).await;
    let e = assert_error(s, &v, 400);
    assert_eq!(e["param"], "with_pieces");
    let (s, v) = post_json(&r, "/tokenize", &json!({ "content": text })).await;
    assert_eq!(s, StatusCode::OK, "ids alone are not capped");
    assert_eq!(v["count"], MAX_PIECES + 1);
}

/// The most pieces `/tokenize` answers (`routes::MAX_PIECES`).
const MAX_PIECES: usize = 65_536;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_flag_clamps_every_request() {
    let cfg = ServeConfig { max_tokens: Some(3), ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    for extra in [json!({ "max_tokens": 100 }), json!({ "max_completion_tokens": 100 }), json!({})] {
        let mut body = json!({ "model": CHAT, "messages": [{ "role": "user", "content": "hi" }] });
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let (s, v) = post_json(&r, "/v1/chat/completions", &body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 3, "{body}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    let (s, v) = post_json(&r, "/v1/completions", &json!({ "model": CHAT, "prompt": "hi", "max_tokens": 50 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_tell_clients_no_local_paths() {
    let msg = "loading /home/alice/secret-models/zhinao-7b/config.json: missing field `hidden_size`";
    let fc = FakeConfig { load_error: Some(msg.into()), ..Default::default() };
    let (r, _, _) = fake_router(test_config(), fc, false).await;
    let t0 = Instant::now();
    loop {
        let (s, h, b) = call(&r, "GET", "/health", &[], b"").await;
        let e = assert_error(s, &json_body(&h, &b), 503);
        let text = e["message"].as_str().unwrap_or("").to_string();
        if text.contains("failed to load") {
            assert!(!text.contains("/home") && !text.contains("alice"), "{text}");
            assert!(text.contains("config.json") && text.contains("hidden_size"), "{text}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
