//! The router over the fake backend, without a socket (`oneshot`): every endpoint's response is
//! deserialised into `async-openai`'s types (the shapes the OpenAI SDKs read), every error path answers
//! OpenAI-shaped JSON with the right status, and auth, 413/422/429/503, batching and CORS behave.

mod serve_util;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_openai::types::chat::{CreateChatCompletionResponse, CreateChatCompletionStreamResponse, FinishReason};
use async_openai::types::completions::CreateCompletionResponse;
use async_openai::types::embeddings::{CreateBase64EmbeddingResponse, CreateEmbeddingResponse};
use async_openai::types::models::ListModelResponse;
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{json, Value};
use serve_util::*;
use zhinao::serve::fake::{fake_embedding, fake_score, FakeConfig, CHAT, EMBED, RERANK};
use zhinao::serve::ServeConfig;

fn chat_body(content: &str) -> Value {
    json!({ "model": CHAT, "messages": [{ "role": "user", "content": content }] })
}

/// The SSE events of a finished stream body: JSON values, `[DONE]` checked last.
fn events(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("utf-8");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_match_the_openai_types() {
    let fc = FakeConfig::default();
    let reply = fc.reply.clone();
    let (r, _, _) = fake_router(test_config(), fc, true).await;

    let (s, v) = post_json(&r, "/v1/chat/completions", &chat_body("hi")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c: CreateChatCompletionResponse = serde_json::from_value(v.clone()).expect("chat completion shape");
    assert_eq!(c.object, "chat.completion");
    assert_eq!(c.model, CHAT);
    assert!(c.id.starts_with("chatcmpl-"));
    assert_eq!(c.choices.len(), 1);
    assert_eq!(c.choices[0].message.content.as_deref(), Some(reply.as_str()));
    assert_eq!(c.choices[0].finish_reason, Some(FinishReason::Stop));
    let u = c.usage.expect("usage always present");
    // The fake template: "user: hi\nassistant: " is 20 characters, one token each.
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (20, reply.chars().count() as u32, 20 + reply.chars().count() as u32)
    );

    // max_tokens, max_completion_tokens (wins), stop strings removed, finish_reason length.
    let mut b = chat_body("hi");
    b["max_tokens"] = json!(3);
    let (_, v) = post_json(&r, "/v1/chat/completions", &b).await;
    assert_eq!(v["choices"][0]["message"]["content"], reply.chars().take(3).collect::<String>());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    b["max_completion_tokens"] = json!(5);
    let (_, v) = post_json(&r, "/v1/chat/completions", &b).await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let mut b = chat_body("hi");
    b["stop"] = json!(["世界", "never"]);
    let (_, v) = post_json(&r, "/v1/chat/completions", &b).await;
    assert_eq!(v["choices"][0]["message"]["content"], "你好，");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    b["stop"] = json!("Hello");
    let (_, v) = post_json(&r, "/v1/chat/completions", &b).await;
    assert_eq!(v["choices"][0]["message"]["content"], "你好，世界! ");

    // Content parts, a system message, and the developer role are accepted.
    let b = json!({ "model": CHAT, "messages": [
        { "role": "developer", "content": "be brief" },
        { "role": "user", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] }
    ], "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": -3, "presence_penalty": 0.1,
       "frequency_penalty": -0.1, "repetition_penalty": 1.1, "n": 1, "tools": [], "response_format": { "type": "text" },
       "user": "x", "unknown_field": { "ignored": true } });
    let (s, v) = post_json(&r, "/v1/chat/completions", &b).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], "system: be brief\nuser: ab\nassistant: ".chars().count());

    // Streamed: role first, deltas, the finish chunk; joined deltas equal the non-streamed text.
    let mut b = chat_body("hi");
    b["stream"] = json!(true);
    let (s, h, body) = call(&r, "POST", "/v1/chat/completions", &[], b.to_string().as_bytes()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/event-stream");
    let evs = events(&body);
    let chunks: Vec<CreateChatCompletionStreamResponse> =
        evs.iter().map(|e| serde_json::from_value(e.clone()).expect("chunk shape")).collect();
    assert_eq!(chunks[0].choices[0].delta.role, Some(async_openai::types::chat::Role::Assistant));
    let text: String = chunks.iter().filter_map(|c| c.choices.first()?.delta.content.clone()).collect();
    assert_eq!(text, reply);
    let last = chunks.last().expect("chunks");
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(evs.iter().all(|e| e.get("usage").is_none()), "no usage field without include_usage");
    assert!(chunks.iter().all(|c| c.id == chunks[0].id && c.object == "chat.completion.chunk"));

    // Text completions, plain and streamed, from a string or token ids.
    let b = json!({ "model": CHAT, "prompt": "abc", "max_tokens": 4 });
    let (s, v) = post_json(&r, "/v1/completions", &b).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c: CreateCompletionResponse = serde_json::from_value(v.clone()).expect("completion shape");
    assert_eq!(c.object, "text_completion");
    assert_eq!(c.choices[0].text, reply.chars().take(4).collect::<String>());
    assert_eq!(c.usage.expect("usage").prompt_tokens, 3);
    let b = json!({ "model": CHAT, "prompt": [97, 98], "stream": true, "stream_options": { "include_usage": true } });
    let (_, _, body) = call(&r, "POST", "/v1/completions", &[], b.to_string().as_bytes()).await;
    let evs = events(&body);
    let chunks: Vec<CreateCompletionResponse> =
        evs.iter().map(|e| serde_json::from_value(e.clone()).expect("completion chunk shape")).collect();
    let text: String = chunks.iter().filter_map(|c| c.choices.first().map(|x| x.text.clone())).collect();
    assert_eq!(text, reply);
    let usage = chunks.last().and_then(|c| c.usage.clone()).expect("usage chunk");
    assert_eq!(usage.prompt_tokens, 2);
    assert!(chunks.last().is_some_and(|c| c.choices.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_embeddings_rerank_tokenize_match_their_shapes() {
    let (r, _, _) = fake_router(test_config(), FakeConfig::default(), true).await;
    let (s, h, b) = call(&r, "GET", "/v1/models", &[], b"").await;
    assert_eq!(s, StatusCode::OK);
    let m: ListModelResponse = serde_json::from_value(json_body(&h, &b)).expect("model list shape");
    let ids: Vec<&str> = m.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [CHAT, EMBED, RERANK]);

    // Embeddings: a string, a list, token ids; float and base64.
    let (s, v) = post_json(&r, "/v1/embeddings", &json!({ "model": EMBED, "input": ["ab", "你好"] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let e: CreateEmbeddingResponse = serde_json::from_value(v).expect("embedding shape");
    assert_eq!(e.data.len(), 2);
    assert_eq!(e.data[1].index, 1);
    assert_eq!(e.data[1].embedding, fake_embedding(&[0x4f60, 0x597d]));
    assert_eq!((e.usage.prompt_tokens, e.usage.total_tokens), (4, 4));
    let (_, v) = post_json(&r, "/v1/embeddings", &json!({ "input": "ab", "encoding_format": "base64" })).await;
    let e: CreateBase64EmbeddingResponse = serde_json::from_value(v).expect("base64 embedding shape");
    let bytes = base64::engine::general_purpose::STANDARD.decode(&e.data[0].embedding.0).expect("base64");
    let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(floats, fake_embedding(&[97, 98]));
    let (_, v) = post_json(&r, "/v1/embeddings", &json!({ "input": [97, 98] })).await;
    let got: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).expect("floats");
    assert_eq!(got, fake_embedding(&[97, 98]));
    let (_, v) = post_json(&r, "/v1/embeddings", &json!({ "input": [[97], [98, 99]] })).await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));

    // Rerank, Jina/Cohere shape: sorted, sigmoid scores, top_n, documents on request.
    let docs = ["xyz", "abc", "ab"];
    let body = json!({ "model": RERANK, "query": "abc", "documents": docs, "top_n": 2, "return_documents": true });
    let (s, v) = post_json(&r, "/v1/rerank", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let res = v["results"].as_array().expect("results");
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["index"], 1);
    assert_eq!(res[1]["index"], 2);
    let raw = fake_score(&"abc\n\nabc".chars().map(|c| c as u32).collect::<Vec<_>>());
    let sig = 1.0 / (1.0 + (-(raw as f64)).exp());
    assert!((res[0]["relevance_score"].as_f64().unwrap_or(0.0) - sig).abs() < 1e-12);
    assert_eq!(res[0]["document"]["text"], "abc");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);
    // TEI shape on /rerank: a bare array, raw scores on request, documents as objects accepted.
    let (s, v) =
        post_json(&r, "/rerank", &json!({ "query": "abc", "texts": docs, "raw_scores": true, "return_text": true }))
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let arr = v.as_array().expect("TEI answers a list");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["index"], 1);
    assert_eq!(arr[0]["score"].as_f64(), Some(raw as f64));
    assert_eq!(arr[2]["index"], 0);
    assert_eq!(arr[0]["text"], "abc");
    let (_, v) = post_json(&r, "/v1/rerank", &json!({ "query": "q", "documents": [{ "text": "q" }] })).await;
    assert_eq!(v["results"][0]["index"], 0);

    // Tokenize / detokenize.
    let (s, v) = post_json(&r, "/tokenize", &json!({ "content": "a中", "with_pieces": true })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tokens"], json!([{ "id": 97, "piece": "a" }, { "id": 0x4e2d, "piece": "中" }]));
    assert_eq!(v["count"], 2);
    let (_, v) = post_json(&r, "/tokenize", &json!({ "prompt": "ab", "model": EMBED })).await;
    assert_eq!(v["tokens"], json!([97, 98]));
    let (_, v) = post_json(&r, "/tokenize", &json!({ "messages": [{ "role": "user", "content": "x" }] })).await;
    assert_eq!(v["count"], "user: x\nassistant: ".chars().count());
    let (_, v) = post_json(&r, "/detokenize", &json!({ "tokens": [0x4f60, 0x597d] })).await;
    assert_eq!(v["content"], "你好");

    // Metrics: Prometheus text with the histograms.
    let (s, h, b) = call(&r, "GET", "/metrics", &[], b"").await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap_or("").starts_with("text/plain"));
    let text = String::from_utf8(b).expect("utf-8");
    for name in [
        "zhinao_requests_total{route=\"/v1/embeddings\",status=\"200\"}",
        "zhinao_queue_depth 0",
        "zhinao_requests_processing 0",
        "zhinao_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "zhinao_inter_token_latency_seconds_count",
        "zhinao_embedding_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_openai_json_with_the_right_status() {
    let cfg = ServeConfig { body_limit: 4096, ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig { n_ctx: 64, ..Default::default() }, true).await;
    let long = "x".repeat(100);
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", json!({ "model": CHAT, "messages": 5 }), 422, None),
        ("/v1/chat/completions", json!({ "model": CHAT }), 422, None),
        (
            "/v1/chat/completions",
            json!({ "model": CHAT, "messages": [{ "role": "user" }] }),
            400,
            Some("messages[0].content"),
        ),
        ("/v1/chat/completions", json!({ "model": CHAT, "messages": [] }), 400, Some("messages")),
        (
            "/v1/chat/completions",
            json!({ "model": "gpt-4", "messages": [{ "role": "user", "content": "a" }] }),
            400,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": EMBED, "messages": [{ "role": "user", "content": "a" }] }),
            400,
            Some("model"),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": CHAT, "messages": [{ "role": "tool", "content": "a" }] }),
            400,
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": CHAT, "messages": [{ "role": "assistant", "content": "a" }] }),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({ "model": CHAT, "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }),
            400,
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["n"] = json!(2);
                b
            },
            400,
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["tools"] = json!([{ "type": "function" }]);
                b
            },
            400,
            Some("tools"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["tool_choice"] = json!("auto");
                b
            },
            400,
            Some("tool_choice"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["response_format"] = json!({ "type": "json_object" });
                b
            },
            400,
            Some("response_format"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["logprobs"] = json!(true);
                b
            },
            400,
            Some("logprobs"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["temperature"] = json!(5);
                b
            },
            400,
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["top_p"] = json!(-0.5);
                b
            },
            400,
            Some("top_p"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["top_k"] = json!(-7);
                b
            },
            400,
            Some("top_k"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["max_tokens"] = json!(0);
                b
            },
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["max_tokens"] = json!(-1);
                b
            },
            422,
            None,
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["max_tokens"] = json!(1e300);
                b
            },
            422,
            None,
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["stop"] = json!([1]);
                b
            },
            422,
            None,
        ),
        (
            "/v1/chat/completions",
            {
                let mut b = chat_body("a");
                b["logit_bias"] = json!({ "1": 5 });
                b
            },
            400,
            Some("logit_bias"),
        ),
        ("/v1/completions", json!({ "model": CHAT, "prompt": ["a", "b"] }), 400, Some("prompt")),
        ("/v1/completions", json!({ "model": CHAT, "prompt": "" }), 400, Some("prompt")),
        ("/v1/completions", json!({ "model": CHAT, "prompt": [2000000] }), 400, Some("prompt")),
        ("/v1/completions", json!({ "model": CHAT, "prompt": "a", "echo": true }), 400, Some("echo")),
        ("/v1/embeddings", json!({ "model": EMBED, "input": [] }), 400, Some("input")),
        ("/v1/embeddings", json!({ "model": EMBED, "input": "" }), 400, Some("input")),
        ("/v1/embeddings", json!({ "model": EMBED, "input": ["a", ""] }), 400, Some("input")),
        (
            "/v1/embeddings",
            json!({ "model": EMBED, "input": "a", "encoding_format": "int8" }),
            400,
            Some("encoding_format"),
        ),
        ("/v1/embeddings", json!({ "model": EMBED, "input": "a", "dimensions": 4 }), 400, Some("dimensions")),
        ("/v1/embeddings", json!({ "model": EMBED, "input": { "a": 1 } }), 422, None),
        ("/v1/embeddings", json!({ "model": CHAT, "input": "a" }), 400, Some("model")),
        ("/v1/rerank", json!({ "query": "a" }), 400, Some("documents")),
        ("/v1/rerank", json!({ "query": "a", "documents": [] }), 400, Some("documents")),
        ("/v1/rerank", json!({ "query": "", "documents": ["b"] }), 400, Some("query")),
        ("/v1/rerank", json!({ "query": "a", "documents": ["b"], "texts": ["c"] }), 400, Some("documents")),
        ("/v1/rerank", json!({ "documents": ["b"] }), 422, None),
        ("/tokenize", json!({ "model": CHAT }), 400, Some("content")),
        ("/detokenize", json!({ "tokens": [4294967295u32] }), 400, Some("tokens")),
        ("/detokenize", json!({ "tokens": [-1] }), 422, None),
    ];
    for (path, body, want, param) in cases {
        let (s, v) = post_json(&r, path, &body).await;
        let e = assert_error(s, &v, want);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{path} {body}: {v}");
        }
    }
    // The prompt does not fit: 400 naming both numbers.
    let (s, v) = post_json(&r, "/v1/chat/completions", &chat_body(&long)).await;
    let e = assert_error(s, &v, 400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["n_prompt_tokens"], 100 + "user: \nassistant: ".len());
    assert_eq!(e["n_ctx"], 64);
    // Malformed JSON, not UTF-8, empty: 400. Too large: 413. Unknown route 404, wrong method 405.
    for body in [&b"{"[..], b"{\"model\": }", b"\xff\xfe", b"", b"{\"model\" \"x\"}"] {
        let (s, h, b) = call(&r, "POST", "/v1/chat/completions", &[], body).await;
        assert_error(s, &json_body(&h, &b), 400);
    }
    let (s, h, b) = call(&r, "POST", "/v1/chat/completions", &[], b"[1, 2]").await;
    assert_error(s, &json_body(&h, &b), 422);
    let big = json!({ "model": CHAT, "messages": [{ "role": "user", "content": "y".repeat(5000) }] });
    let (s, v) = post_json(&r, "/v1/chat/completions", &big).await;
    assert_error(s, &v, 413);
    let (s, h, b) = call(&r, "GET", "/v1/nope", &[], b"").await;
    assert_error(s, &json_body(&h, &b), 404);
    let (s, h, b) = call(&r, "GET", "/v1/chat/completions", &[], b"").await;
    assert_error(s, &json_body(&h, &b), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health_and_models() {
    let cfg = ServeConfig { api_key: Some("s3cret".into()), ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    assert_eq!(call(&r, "GET", "/health", &[], b"").await.0, StatusCode::OK);
    assert_eq!(call(&r, "GET", "/v1/models", &[], b"").await.0, StatusCode::OK);
    let body = chat_body("a").to_string();
    for headers in [vec![], vec![("authorization", "Bearer wrong")], vec![("x-api-key", "s3cre")]] {
        let (s, h, b) = call(&r, "POST", "/v1/chat/completions", &headers, body.as_bytes()).await;
        let e = assert_error(s, &json_body(&h, &b), 401);
        assert_eq!(e["type"], "authentication_error");
    }
    let (s, h, b) = call(&r, "GET", "/metrics", &[], b"").await;
    assert_error(s, &json_body(&h, &b), 401);
    for headers in [vec![("authorization", "Bearer s3cret")], vec![("x-api-key", "s3cret")]] {
        let (s, _, _) = call(&r, "POST", "/v1/chat/completions", &headers, body.as_bytes()).await;
        assert_eq!(s, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_is_503_then_200_and_a_failed_load_is_503_with_the_reason() {
    let fc = FakeConfig { load_delay: Duration::from_millis(400), ..Default::default() };
    let (r, _, _) = fake_router(test_config(), fc, false).await;
    let (s, h, b) = call(&r, "GET", "/health", &[], b"").await;
    let e = assert_error(s, &json_body(&h, &b), 503);
    assert_eq!(e["type"], "unavailable_error");
    assert!(h.contains_key("retry-after"));
    let (s, v) = post_json(&r, "/v1/chat/completions", &chat_body("a")).await;
    assert_error(s, &v, 503);
    let (s, _, b) = call(&r, "GET", "/v1/models", &[], b"").await;
    assert_eq!(s, StatusCode::OK, "models stay public while loading");
    assert_eq!(serde_json::from_slice::<Value>(&b).expect("json")["data"], json!([]));
    let t0 = std::time::Instant::now();
    while call(&r, "GET", "/health", &[], b"").await.0 != StatusCode::OK {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(post_json(&r, "/v1/chat/completions", &chat_body("a")).await.0, StatusCode::OK);

    let fc = FakeConfig { load_error: Some("weights missing".into()), ..Default::default() };
    let (r, _, _) = fake_router(test_config(), fc, false).await;
    let t0 = std::time::Instant::now();
    loop {
        let (s, h, b) = call(&r, "GET", "/health", &[], b"").await;
        let e = assert_error(s, &json_body(&h, &b), 503);
        if e["message"].as_str().unwrap_or("").contains("weights missing") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_or_server_answers_429_at_once() {
    // One generation runs (slowly), one waits; the third is refused without waiting.
    let cfg = ServeConfig { max_queue: 1, ..test_config() };
    let fc = FakeConfig { token_delay: Duration::from_millis(50), ..Default::default() };
    let (r, app, stats) = fake_router(cfg, fc, true).await;
    let mut b = chat_body("a");
    b["stream"] = json!(true);
    let send = |r: &axum::Router| {
        let req = axum::http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(b.to_string()))
            .expect("req");
        tower::ServiceExt::oneshot(r.clone(), req)
    };
    let running = send(&r).await.expect("first");
    assert_eq!(running.status(), StatusCode::OK);
    let t0 = std::time::Instant::now();
    while !stats.running.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let queued = send(&r).await.expect("second");
    assert_eq!(queued.status(), StatusCode::OK);
    assert_eq!(app.metrics.queue_depth.load(Ordering::SeqCst), 1);
    let t1 = std::time::Instant::now();
    let (s, h, body) = call(&r, "POST", "/v1/chat/completions", &[], b.to_string().as_bytes()).await;
    assert!(t1.elapsed() < Duration::from_secs(1), "429 must not wait");
    let e = assert_error(s, &json_body(&h, &body), 429);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(h["retry-after"], "1");
    // Dropping the waiting stream takes it out of the queue at once.
    drop(queued);
    assert_eq!(app.metrics.queue_depth.load(Ordering::SeqCst), 0);
    drop(running);

    // max_concurrent: the second request in flight is refused.
    let cfg = ServeConfig { max_concurrent: 1, ..test_config() };
    let fc = FakeConfig { token_delay: Duration::from_millis(50), ..Default::default() };
    let (r, _, _) = fake_router(cfg, fc, true).await;
    let held = send(&r).await.expect("first");
    let (s, h, body) = call(&r, "POST", "/v1/embeddings", &[], br#"{"input":"a"}"#).await;
    assert_error(s, &json_body(&h, &body), 429);
    assert_eq!(call(&r, "GET", "/health", &[], b"").await.0, StatusCode::OK, "health is not admitted");
    drop(held);
    let (s, _, _) = call(&r, "POST", "/v1/embeddings", &[], br#"{"input":"a"}"#).await;
    assert_eq!(s, StatusCode::OK, "the slot is back once the stream is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_and_rerank_requests_waiting_together_run_as_one_batch() {
    let fc = FakeConfig { token_delay: Duration::from_millis(20), ..Default::default() };
    let (r, app, stats) = fake_router(test_config(), fc, true).await;
    // Occupy the engine with a stream, queue three embedding and two rerank requests, then free it.
    let mut b = chat_body("a");
    b["stream"] = json!(true);
    let req = axum::http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(b.to_string()))
        .expect("req");
    let stream = tower::ServiceExt::oneshot(r.clone(), req).await.expect("stream");
    while !stats.running.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut tasks = Vec::new();
    for (path, body) in [
        ("/v1/embeddings", json!({ "input": "aa" })),
        ("/v1/embeddings", json!({ "input": ["bb", "cc"] })),
        ("/v1/rerank", json!({ "query": "q", "documents": ["x"] })),
        ("/v1/embeddings", json!({ "input": "dd" })),
        ("/v1/rerank", json!({ "query": "q", "documents": ["y", "z"] })),
    ] {
        let r = r.clone();
        tasks.push(tokio::spawn(async move { post_json(&r, path, &body).await }));
    }
    let t0 = std::time::Instant::now();
    while app.metrics.queue_depth.load(Ordering::SeqCst) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(5), "requests did not queue");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(stream);
    for t in tasks {
        let (s, v) = t.await.expect("task");
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    assert_eq!(*stats.embed_calls.lock().expect("lock"), vec![4], "three requests, one batch of 4 texts");
    assert_eq!(*stats.rerank_calls.lock().expect("lock"), vec![3], "two requests, one batch of 3 pairs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_headers_when_configured() {
    let cfg = ServeConfig { cors_origins: vec!["http://app.local".into()], api_key: Some("k".into()), ..test_config() };
    let (r, _, _) = fake_router(cfg, FakeConfig::default(), true).await;
    let headers = [
        ("origin", "http://app.local"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization,content-type"),
    ];
    let (s, h, _) = call(&r, "OPTIONS", "/v1/chat/completions", &headers, b"").await;
    assert!(s.is_success(), "preflight {s}");
    assert_eq!(h["access-control-allow-origin"], "http://app.local");
    let (_, h, _) = call(&r, "GET", "/health", &[("origin", "http://other.local")], b"").await;
    assert!(!h.contains_key("access-control-allow-origin"));
    // Without configured origins there are no CORS headers.
    let (r, _, _) = fake_router(test_config(), FakeConfig::default(), true).await;
    let (_, h, _) = call(&r, "GET", "/health", &[("origin", "http://app.local")], b"").await;
    assert!(!h.contains_key("access-control-allow-origin"));
}
