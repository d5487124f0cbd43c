//! The server on 127.0.0.1 with the fake backend, read byte by byte over raw TCP: SSE framing,
//! `[DONE]`, the usage chunk, UTF-8 integrity of a Chinese stream, keep-alive comments, a failure
//! mid-stream, client disconnects (during prefill, mid-stream, non-streamed, while queued) freeing the
//! engine, 64 concurrent streaming clients, and graceful shutdown.

mod serve_util;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::types::chat::CreateChatCompletionStreamResponse;
use serde_json::{json, Value};
use serve_util::*;
use zhinao::serve::fake::{self, FakeConfig, FakeStats, CHAT};
use zhinao::serve::ServeConfig;

async fn fake_server(cfg: ServeConfig, fc: FakeConfig) -> (Server, Arc<FakeStats>) {
    let stats = Arc::new(FakeStats::default());
    let s = spawn_server(cfg, fake::loader(fc, stats.clone())).await;
    wait_healthy(s.addr, Duration::from_secs(10)).await;
    (s, stats)
}

fn stream_body(max_tokens: usize, include_usage: bool) -> Value {
    json!({
        "model": CHAT,
        "messages": [{ "role": "user", "content": "你好" }],
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": { "include_usage": include_usage },
    })
}

/// Wait (bounded) until `cond` holds.
async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_framing_done_usage_and_utf8_on_a_chinese_stream() {
    let fc = FakeConfig::default();
    let reply = fc.reply.clone();
    let (server, _) = fake_server(test_config(), fc).await;
    let mut o = open(server.addr, "/v1/chat/completions", &stream_body(100, true)).await;
    assert_eq!(o.status, 200);
    assert_eq!(o.header("content-type"), Some("text/event-stream"));
    assert_eq!(o.header("cache-control"), Some("no-cache"));
    let mut raw = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), o.next_event()).await.expect("stalled") {
        raw.push(ev);
    }
    // Byte level: every event is exactly `data: <one line>`, valid UTF-8; the last is [DONE].
    assert_eq!(raw.last().map(Vec::as_slice), Some(&b"data: [DONE]"[..]));
    let mut chunks = Vec::new();
    for ev in &raw[..raw.len() - 1] {
        let text = std::str::from_utf8(ev).expect("valid UTF-8 event");
        let data = text.strip_prefix("data: ").expect("data: prefix");
        assert!(!data.contains('\n') && !data.contains('\r'));
        let v: Value = serde_json::from_str(data).expect("JSON payload");
        let c: CreateChatCompletionStreamResponse = serde_json::from_value(v.clone()).expect("chunk shape");
        chunks.push((v, c));
    }
    // The role first; with include_usage every chunk has usage: null but the last, which has
    // choices: [] and the totals.
    assert_eq!(chunks[0].0["choices"][0]["delta"], json!({ "role": "assistant", "content": "" }));
    let (last_v, last) = chunks.last().expect("chunks");
    assert_eq!(last_v["choices"], json!([]));
    let u = last.usage.clone().expect("usage totals");
    assert_eq!(u.completion_tokens as usize, reply.chars().count());
    assert_eq!(u.prompt_tokens as usize, "user: 你好\nassistant: ".chars().count());
    assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    for (v, _) in &chunks[..chunks.len() - 1] {
        assert_eq!(v.get("usage"), Some(&Value::Null), "usage: null on every other chunk: {v}");
    }
    let finish = &chunks[chunks.len() - 2].0;
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    // UTF-8 integrity: every delta is whole characters and the deltas join to the reply exactly.
    let deltas: Vec<String> =
        chunks.iter().filter_map(|(_, c)| c.choices.first()?.delta.content.clone()).filter(|s| !s.is_empty()).collect();
    assert!(deltas.iter().all(|d| !d.contains('\u{fffd}')));
    assert_eq!(deltas.concat(), reply);
    assert!(deltas.len() > 10, "one delta per token");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stream_keep_alive_and_a_failure_mid_stream() {
    // Keep-alive comments while the prefill takes longer than the interval.
    let fc = FakeConfig { prefill_delay: Duration::from_millis(700), ..Default::default() };
    let (server, _) = fake_server(test_config(), fc).await;
    let body = json!({ "model": CHAT, "prompt": "abc", "max_tokens": 3, "stream": true });
    let mut o = open(server.addr, "/v1/completions", &body).await;
    let mut comments = 0;
    let mut texts = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), o.next_event()).await.expect("stalled") {
        let t = String::from_utf8(ev).expect("utf-8");
        if t.starts_with(':') {
            comments += 1;
            assert!(texts.is_empty(), "keep-alive only while waiting here");
            continue;
        }
        texts.push(t);
    }
    assert!(comments >= 2, "{comments} keep-alive comments in 700 ms at 200 ms");
    assert_eq!(texts.last().map(String::as_str), Some("data: [DONE]"));
    let chunks: Vec<Value> = texts[..texts.len() - 1]
        .iter()
        .map(|t| serde_json::from_str(t.strip_prefix("data: ").expect("data")).expect("json"))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().expect("chunk")["choices"][0]["finish_reason"], "length");
    server.stop().await.expect("stop");

    // An engine failure after 3 tokens: the deltas so far, one error event, [DONE].
    let fc = FakeConfig { fail_after: Some(3), ..Default::default() };
    let (server, _) = fake_server(test_config(), fc).await;
    let evs = sse_events(open(server.addr, "/v1/chat/completions", &stream_body(50, false)).await).await;
    let errors: Vec<&Value> = evs.iter().filter(|e| e.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(evs.last(), Some(errors[0]), "the error is the last event before [DONE]");
    let w: async_openai::error::WrappedError = serde_json::from_value(errors[0].clone()).expect("error shape");
    assert!(w.error.message.contains("injected failure"));
    let text: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text.chars().count(), 3);
    // The server stays healthy.
    assert_eq!(http(server.addr, "GET", "/health", &[], b"").await.expect("health").status, 200);
    server.stop().await.expect("stop");

    // A backend that panics fails that request (an error event, then [DONE]), and the next one works.
    let fc = FakeConfig { panic_on: Some("BOOM".into()), ..Default::default() };
    let (server, _) = fake_server(test_config(), fc).await;
    let mut bad = stream_body(5, false);
    bad["messages"][0]["content"] = json!("BOOM");
    let evs = sse_events(open(server.addr, "/v1/chat/completions", &bad).await).await;
    assert!(evs.last().is_some_and(|e| e.get("error").is_some()), "{evs:?}");
    let evs = sse_events(open(server.addr, "/v1/chat/completions", &stream_body(5, false)).await).await;
    assert_eq!(evs.last().expect("events")["choices"][0]["finish_reason"], "length");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_frees_the_engine_in_prefill_mid_stream_non_streamed_and_queued() {
    let long: String = "长".repeat(2000);
    let fc = FakeConfig {
        reply: long,
        prefill_delay: Duration::from_millis(300),
        token_delay: Duration::from_millis(20),
        n_ctx: 4096,
        ..Default::default()
    };
    let (server, stats) = fake_server(test_config(), fc).await;
    let addr = server.addr;
    let bound = Duration::from_secs(2);

    // During prefill: the head and the role chunk arrive, then the client leaves.
    let mut o = open(addr, "/v1/chat/completions", &stream_body(2000, false)).await;
    assert!(o.next_event().await.is_some());
    until("the generation starts", bound, || stats.running.load(Ordering::SeqCst)).await;
    drop(o);
    until("the engine is free", bound, || !stats.running.load(Ordering::SeqCst)).await;
    wait_metric(addr, "zhinao_requests_processing", 0.0, bound).await;
    assert_eq!(stats.cancelled_in_prefill.load(Ordering::SeqCst), 1);

    // Mid-stream.
    let mut o = open(addr, "/v1/chat/completions", &stream_body(2000, false)).await;
    for _ in 0..4 {
        o.next_event().await.expect("event");
    }
    drop(o);
    let t0 = Instant::now();
    until("the engine is free", bound, || !stats.running.load(Ordering::SeqCst)).await;
    wait_metric(addr, "zhinao_requests_processing", 0.0, bound).await;
    assert!(t0.elapsed() < Duration::from_millis(1500), "freed within a step or so: {:?}", t0.elapsed());
    assert_eq!(stats.cancelled.load(Ordering::SeqCst), 2);
    let tokens = stats.tokens.load(Ordering::SeqCst);
    assert!(tokens < 20, "generation stopped: {tokens} tokens");

    // Not streamed: the client leaves while the handler waits.
    let before = stats.tokens.load(Ordering::SeqCst);
    let body = json!({ "model": CHAT, "messages": [{ "role": "user", "content": "x" }], "max_tokens": 2000 });
    let task =
        tokio::spawn(async move { http(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes()).await });
    until("tokens flow", Duration::from_secs(5), || stats.tokens.load(Ordering::SeqCst) > before + 2).await;
    task.abort();
    let _ = task.await;
    until("the engine is free", bound, || !stats.running.load(Ordering::SeqCst)).await;
    wait_metric(addr, "zhinao_requests_processing", 0.0, bound).await;
    assert_eq!(stats.cancelled.load(Ordering::SeqCst), 3);
    assert!(stats.tokens.load(Ordering::SeqCst) - before < 60);

    // Queued: a request waiting behind a running one leaves the queue when its client goes.
    let mut running = open(addr, "/v1/chat/completions", &stream_body(2000, false)).await;
    running.next_event().await.expect("role");
    let queued = open(addr, "/v1/chat/completions", &stream_body(2000, false)).await;
    wait_metric(addr, "zhinao_queue_depth", 1.0, bound).await;
    drop(queued);
    wait_metric(addr, "zhinao_queue_depth", 0.0, bound).await;
    drop(running);
    wait_metric(addr, "zhinao_requests_processing", 0.0, bound).await;
    wait_metric(addr, "zhinao_requests_in_flight", 0.0, bound).await;
    assert_eq!(stats.generations.load(Ordering::SeqCst), 4, "the queued job never ran");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streaming_clients_complete_or_get_429() {
    let fc =
        FakeConfig { reply: "并发测试 ok".into(), token_delay: Duration::from_millis(2), ..Default::default() };
    let cfg = ServeConfig { max_queue: 16, ..test_config() };
    let (server, stats) = fake_server(cfg, fc).await;
    let addr = server.addr;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(async move {
                let o = open(addr, "/v1/chat/completions", &stream_body(100, true)).await;
                if o.status == 429 {
                    assert!(o.header("retry-after").is_some());
                    let body = o.rest().await.expect("body");
                    let v: Value = serde_json::from_slice(&body).expect("JSON 429");
                    assert_eq!(v["error"]["type"], "rate_limit_error");
                    return false;
                }
                let evs = sse_events(o).await;
                let text: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
                assert_eq!(text, "并发测试 ok");
                assert!(evs.last().is_some_and(|e| e["usage"]["completion_tokens"] == 7));
                true
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(60), t).await.expect("a client hung").expect("client task") {
            ok += 1;
        }
    }
    assert!(ok >= 1 && stats.generations.load(Ordering::SeqCst) == ok, "{ok} completed");
    eprintln!("64 clients: {ok} completed, {} got 429, {:?}", 64 - ok, t0.elapsed());
    assert_eq!(http(addr, "GET", "/health", &[], b"").await.expect("health").status, 200);
    wait_metric(addr, "zhinao_queue_depth", 0.0, Duration::from_secs(2)).await;
    wait_metric(addr, "zhinao_requests_processing", 0.0, Duration::from_secs(2)).await;
    wait_metric(addr, "zhinao_requests_in_flight", 0.0, Duration::from_secs(2)).await;
    assert_eq!(metric(addr, "zhinao_rejected_total").await as usize, 64 - ok);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_streams_within_the_grace_and_errors_them_after() {
    // Within the grace period the stream finishes normally; new connections are refused.
    let fc = FakeConfig { token_delay: Duration::from_millis(20), ..Default::default() };
    let (mut server, stats) = fake_server(test_config(), fc.clone()).await;
    let addr = server.addr;
    let mut o = open(addr, "/v1/chat/completions", &stream_body(100, false)).await;
    o.next_event().await.expect("role");
    until("running", Duration::from_secs(2), || stats.running.load(Ordering::SeqCst)).await;
    server.signal_shutdown();
    let evs = sse_events(o).await;
    assert_eq!(evs.last().expect("events")["choices"][0]["finish_reason"], "stop");
    let r = tokio::time::timeout(Duration::from_secs(10), server.handle).await.expect("serve returned");
    assert_eq!(r.expect("join"), Ok(()));
    assert!(http(addr, "GET", "/health", &[], b"").await.is_err(), "the listener is closed");

    // Past the grace period a running stream ends with one error event and [DONE].
    let cfg = ServeConfig { shutdown_grace: Duration::from_millis(100), ..test_config() };
    let fc = FakeConfig { reply: "x".repeat(1000), token_delay: Duration::from_millis(20), n_ctx: 4096, ..fc };
    let (mut server, stats) = fake_server(cfg, fc).await;
    let mut o = open(server.addr, "/v1/chat/completions", &stream_body(1000, false)).await;
    o.next_event().await.expect("role");
    until("running", Duration::from_secs(2), || stats.running.load(Ordering::SeqCst)).await;
    server.signal_shutdown();
    let evs = sse_events(o).await;
    let last = evs.last().expect("events");
    assert!(last["error"]["message"].as_str().unwrap_or("").contains("shut down"), "{last}");
    let r = tokio::time::timeout(Duration::from_secs(10), server.handle).await.expect("serve returned");
    assert_eq!(r.expect("join"), Ok(()));
}
