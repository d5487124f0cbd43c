//! Malformed bodies, by property testing against the router over the fake backend, on every JSON
//! route (chat, completions, embeddings, both rerank paths, tokenize, detokenize): random bytes,
//! truncated JSON, any JSON value as the whole body or in any field, extreme numbers, deep nesting,
//! invalid UTF-8 inside strings, wrong content types and 10,000 messages must always get a JSON
//! answer within a bounded time, never a 5xx other than 503 or a panic (a panic would surface as a
//! 500 from the catch-panic layer). Garbage, truncated and non-UTF-8 bodies must get exactly a 4xx.

mod serve_util;

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use proptest::prelude::*;
use serde_json::{json, Value};
use serve_util::*;
use zhinao::serve::fake::{FakeConfig, CHAT, EMBED, RERANK};

const ROUTES: [&str; 7] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/rerank", "/tokenize", "/detokenize"];

fn runtime() -> &'static (tokio::runtime::Runtime, Router) {
    static RT: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let (r, _, _) = rt.block_on(fake_router(test_config(), FakeConfig::default(), true));
        (rt, r)
    })
}

/// POST `body` to `path` as JSON; returns the status after checking the answer is JSON (or SSE for a
/// stream that was accepted) and never a 5xx but 503.
fn post(path: &str, body: &[u8]) -> u16 {
    post_as(path, Some("application/json"), body)
}

/// [`post`] with this `Content-Type` (none when `None`); every answer comes within 30 s.
fn post_as(path: &str, content_type: Option<&str>, body: &[u8]) -> u16 {
    let (rt, r) = runtime();
    let headers: Vec<(&str, &str)> = content_type.map(|c| ("content-type", c)).into_iter().collect();
    let answer = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), call(r, "POST", path, &headers, body)).await });
    let (status, headers, bytes) =
        answer.unwrap_or_else(|_| panic!("{path} hung on {:?}", String::from_utf8_lossy(body)));
    let s = status.as_u16();
    assert!(
        s < 500 || s == 503,
        "{path} answered {s} to {:?}: {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&bytes)
    );
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct == "text/event-stream" {
        assert_eq!(s, 200);
        assert!(bytes.ends_with(b"data: [DONE]\n\n"));
        return s;
    }
    let v = json_body(&headers, &bytes);
    if s >= 400 {
        assert_error(status, &v, s);
    }
    s
}

/// Valid bodies for each route, the seeds of the mutations.
fn templates() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/chat/completions",
            json!({ "model": CHAT, "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 4,
                    "temperature": 0.5, "top_p": 0.9, "stop": ["x"], "stream": false, "seed": 1 }),
        ),
        ("/v1/completions", json!({ "model": CHAT, "prompt": "hi", "max_tokens": 4, "top_k": 3, "stream": true })),
        ("/v1/embeddings", json!({ "model": EMBED, "input": ["a", "b"], "encoding_format": "float" })),
        ("/v1/rerank", json!({ "model": RERANK, "query": "q", "documents": ["a", "b"], "top_n": 1 })),
        ("/rerank", json!({ "query": "q", "texts": ["a"], "raw_scores": true })),
        ("/tokenize", json!({ "content": "hi", "with_pieces": true })),
        ("/detokenize", json!({ "tokens": [104, 105] })),
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "system", "content": [{ "type": "text", "text": "s" }] },
                                 { "role": "user", "content": "hi" }],
                    "stream": true, "stream_options": { "include_usage": true }, "cache_salt": "t",
                    "max_completion_tokens": 3, "presence_penalty": 0.1, "frequency_penalty": 0.1 }),
        ),
        ("/v1/completions", json!({ "prompt": [104, 105], "max_tokens": 2, "cache_salt": "t", "echo": false })),
        ("/v1/embeddings", json!({ "input": [[104, 105], [106]], "encoding_format": "base64" })),
        ("/v1/rerank", json!({ "query": "q", "documents": [{ "text": "a" }, " b"], "return_documents": true })),
        ("/rerank", json!({ "model": RERANK, "query": "q", "texts": ["a", "b"], "return_text": true })),
        ("/tokenize", json!({ "messages": [{ "role": "user", "content": "hi" }], "with_pieces": true })),
        ("/detokenize", json!({ "model": CHAT, "tokens": [] })),
    ]
}

const TEMPLATES: usize = 14;

/// Arbitrary JSON values, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_a_json_4xx(route in 0..ROUTES.len(), body in prop::collection::vec(any::<u8>(), 0..400)) {
        let s = post(ROUTES[route], &body);
        prop_assert!((400..500).contains(&s), "random bytes accepted with {}", s);
    }

    #[test]
    fn truncated_json_gets_a_json_400(t in 0..TEMPLATES, frac in 0.0f64..1.0) {
        let (path, v) = &templates()[t];
        let text = v.to_string();
        let cut = ((text.len() as f64 * frac) as usize).min(text.len() - 1);
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        prop_assert_eq!(post(path, &text.as_bytes()[..cut]), 400);
    }

    #[test]
    fn any_value_in_any_field_never_breaks_the_server(t in 0..TEMPLATES, field in 0..12usize, value in any_json()) {
        let (path, mut v) = templates()[t].clone();
        let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let extra = ["n", "tools", "response_format", "stream_options", "logit_bias", "max_completion_tokens"];
        let key = keys.get(field).cloned().unwrap_or_else(|| extra[field % extra.len()].to_string());
        v[key.as_str()] = value;
        post(path, v.to_string().as_bytes());
    }

    #[test]
    fn extreme_numbers_are_refused_or_clamped(t in 0..TEMPLATES, field in 0..8usize, n in 0..12usize) {
        let numbers = ["1e308", "-1e308", "1e400", "18446744073709551616", "-9223372036854775809", "4294967296",
                       "-1", "0", "-0", "0.5", "1e-320", "99999999999999999999999999999"];
        let (path, v) = &templates()[t];
        let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let key = keys.get(field).cloned().unwrap_or_else(|| "max_tokens".into());
        let mut text = v.clone();
        text[key.as_str()] = json!("__N__");
        let body = text.to_string().replace("\"__N__\"", numbers[n]);
        post(path, body.as_bytes());
    }

    #[test]
    fn any_value_as_the_whole_body_never_breaks_the_server(route in 0..ROUTES.len(), value in any_json()) {
        post(ROUTES[route], value.to_string().as_bytes());
    }

    #[test]
    fn invalid_utf8_in_a_string_is_a_json_4xx(t in 0..TEMPLATES, at in 0.0f64..1.0, bad in 0..5usize) {
        let seqs: [&[u8]; 5] = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe4\xb8"];
        let (path, v) = &templates()[t];
        let text = v.to_string();
        // Inside a string: just after one of the template's quotes.
        let quotes: Vec<usize> = text.match_indices('"').map(|(i, _)| i + 1).collect();
        let i = quotes[((quotes.len() as f64 * at) as usize).min(quotes.len() - 1)];
        let mut body = text.as_bytes()[..i].to_vec();
        body.extend_from_slice(seqs[bad]);
        body.extend_from_slice(&text.as_bytes()[i..]);
        let s = post(path, &body);
        prop_assert!((400..500).contains(&s), "invalid UTF-8 accepted with {}", s);
    }

    #[test]
    fn wrong_content_types_never_break_the_server(t in 0..TEMPLATES, ct in 0..8usize) {
        let types = [None, Some("text/plain"), Some("application/x-www-form-urlencoded"),
                     Some("multipart/form-data; boundary=x"), Some("application/json; charset=utf-16"),
                     Some("application/jsonx"), Some("APPLICATION/JSON"), Some("application/json, text/plain")];
        let (path, v) = &templates()[t];
        post_as(path, types[ct], v.to_string().as_bytes());
    }

    #[test]
    fn deep_nesting_is_a_json_4xx(route in 0..ROUTES.len(), depth in 1usize..20_000, objects in any::<bool>()) {
        let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let s = post(ROUTES[route], body.as_bytes());
        prop_assert!((400..500).contains(&s));
    }
}

#[test]
fn ten_thousand_messages_get_a_json_answer() {
    // Alternating and well formed: the fake template does not trim, so the prompt overflows: 400.
    let mut msgs: Vec<Value> = (0..9_999)
        .map(|i| json!({ "role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("m{i}") }))
        .collect();
    msgs.push(json!({ "role": "user", "content": "last" }));
    let body = json!({ "model": CHAT, "messages": msgs });
    assert_eq!(post("/v1/chat/completions", body.to_string().as_bytes()), 400);
    // Malformed in the middle.
    let mut bad = body.clone();
    bad["messages"][5000] = json!({ "role": 7, "content": "x" });
    assert_eq!(post("/v1/chat/completions", bad.to_string().as_bytes()), 422);
    bad["messages"][5000] = json!({ "role": "function", "content": "x" });
    assert_eq!(post("/v1/chat/completions", bad.to_string().as_bytes()), 400);
    // 10,000 token-id inputs to the embeddings route.
    let ids: Vec<Vec<u32>> = (0..10_000).map(|i| vec![97 + (i % 20)]).collect();
    assert_eq!(post("/v1/embeddings", json!({ "input": ids }).to_string().as_bytes()), 400);
}
