//! Malformed bodies, by property testing against the router over the fake backend: random bytes,
//! truncated JSON, wrong types in every field, extreme numbers, deep nesting and 10,000 messages must
//! always get a JSON answer, never a 5xx or a panic (a panic would surface as a 500 from the
//! catch-panic layer). Garbage and truncated bodies must get exactly a 4xx.

mod serve_util;

use std::sync::OnceLock;

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

/// POST `body` to `path`; returns the status after checking the answer is JSON (or SSE for a stream
/// that was accepted) and never a 5xx.
fn post(path: &str, body: &[u8]) -> u16 {
    let (rt, r) = runtime();
    let (status, headers, bytes) = rt.block_on(call(r, "POST", path, &[], body));
    let s = status.as_u16();
    assert!(s < 500, "{path} answered {s} to {:?}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&bytes));
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
    ]
}

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
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_get_a_json_4xx(route in 0..ROUTES.len(), body in prop::collection::vec(any::<u8>(), 0..400)) {
        let s = post(ROUTES[route], &body);
        prop_assert!((400..500).contains(&s), "random bytes accepted with {}", s);
    }

    #[test]
    fn truncated_json_gets_a_json_400(t in 0..7usize, frac in 0.0f64..1.0) {
        let (path, v) = &templates()[t];
        let text = v.to_string();
        let cut = ((text.len() as f64 * frac) as usize).min(text.len() - 1);
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        prop_assert_eq!(post(path, &text.as_bytes()[..cut]), 400);
    }

    #[test]
    fn any_value_in_any_field_never_breaks_the_server(t in 0..7usize, field in 0..12usize, value in any_json()) {
        let (path, mut v) = templates()[t].clone();
        let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let extra = ["n", "tools", "response_format", "stream_options", "logit_bias", "max_completion_tokens"];
        let key = keys.get(field).cloned().unwrap_or_else(|| extra[field % extra.len()].to_string());
        v[key.as_str()] = value;
        post(path, v.to_string().as_bytes());
    }

    #[test]
    fn extreme_numbers_are_refused_or_clamped(t in 0..7usize, field in 0..8usize, n in 0..12usize) {
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
