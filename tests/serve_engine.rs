//! The real engine behind the server, on 127.0.0.1 with the tiny checkpoints (GPU: lavapipe in CI):
//! temperature-0 text streamed equals not streamed equals `zhinao generate`; embeddings equal
//! `zhinao embed`; rerank scores equal `zhinao rerank`; 64 concurrent streaming clients; a disconnect
//! frees the engine; `generate_cancellable` stops before and during generation; SIGTERM on the
//! `zhinao serve` binary finishes the stream in flight and exits 0, exits after the grace period
//! while a client holds a request open, and a second signal exits at once.

mod common;
mod serve_util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_util::*;
use zhinao::serve::engine::{loader, EngineOptions};
use zhinao::serve::ServeConfig;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn asset(name: &str) -> std::path::PathBuf {
    std::path::Path::new(ROOT).join("assets").join(name)
}

fn options() -> EngineOptions {
    EngineOptions {
        chat: Some(asset("tiny-zhinao")),
        embedding: Some(asset("tiny-bert")),
        rerank: Some(asset("tiny-reranker")),
        chunk: 512,
        embed_batch_tokens: 8192,
        ..Default::default()
    }
}

/// One server with the three tiny models for the comparison tests, on its own runtime.
fn shared() -> SocketAddr {
    static S: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    S.get_or_init(|| {
        common::ctx(); // fail loudly (CI: not Vulkan) before the server hides it in a load error
                       // Built on a plain thread: the callers are inside their own runtimes.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
            let addr = rt.block_on(async {
                let s = spawn_server(test_config(), loader(options())).await;
                wait_healthy(s.addr, Duration::from_secs(120)).await;
                let addr = s.addr;
                std::mem::forget(s); // serves until the test process exits
                addr
            });
            (rt, addr)
        })
        .join()
        .expect("shared server")
    })
    .1
}

fn zhinao(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_zhinao")).current_dir(ROOT).args(args).output().expect("run zhinao");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let r = http(addr, "POST", path, &[], body.to_string().as_bytes()).await.expect("request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_text_streamed_equals_not_streamed_equals_zhinao_generate() {
    let addr = shared();
    let chat = json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "你好，请介绍一下你自己" }],
                       "temperature": 0, "max_tokens": 12 });
    let plain = post(addr, "/v1/chat/completions", &chat).await;
    let text = plain["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    let mut s = chat.clone();
    s["stream"] = json!(true);
    s["stream_options"] = json!({ "include_usage": true });
    let evs = sse_events(open(addr, "/v1/chat/completions", &s).await).await;
    let streamed: String = evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    let cli = zhinao(&[
        "generate",
        "--model",
        "assets/tiny-zhinao",
        "--prompt",
        "你好，请介绍一下你自己",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert_eq!(streamed, text);
    assert_eq!(text, cli["text"].as_str().expect("cli text"));
    let usage = &evs.last().expect("usage chunk")["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[k], plain["usage"][k], "{k}");
    }
    assert_eq!(usage["prompt_tokens"], cli["prompt_ids"].as_array().map_or(0, Vec::len));
    assert_eq!(usage["completion_tokens"], cli["output_ids"].as_array().map_or(0, Vec::len));
    let finish = if cli["stop_reason"] == "eos" { "stop" } else { "length" };
    assert_eq!(plain["choices"][0]["finish_reason"], finish);

    // A raw prompt through /v1/completions equals `generate` without the template.
    let c = json!({ "model": "tiny-zhinao", "prompt": "The capital of France", "temperature": 0, "max_tokens": 8 });
    let plain = post(addr, "/v1/completions", &c).await;
    let cli = zhinao(&[
        "generate",
        "--model",
        "assets/tiny-zhinao",
        "--prompt",
        "The capital of France",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(plain["choices"][0]["text"], cli["text"]);

    // Seeded sampling is reproducible.
    let mut sampled = chat.clone();
    sampled["temperature"] = json!(0.9);
    sampled["seed"] = json!(42);
    let a = post(addr, "/v1/chat/completions", &sampled).await;
    let b = post(addr, "/v1/chat/completions", &sampled).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);

    // A prompt longer than the context: 400 with both numbers, before any GPU work.
    let long =
        json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "一二三四五 ".repeat(400) }] });
    let r = http(addr, "POST", "/v1/chat/completions", &[], long.to_string().as_bytes()).await.expect("request");
    assert_eq!(r.status, 400);
    let e = r.json();
    assert!(e["error"]["n_prompt_tokens"].as_u64().unwrap_or(0) >= 512, "{e}");
    assert_eq!(e["error"]["n_ctx"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_equal_zhinao_embed() {
    let addr = shared();
    let texts = ["你好，世界", "hello world", "A somewhat longer sentence about retrieval and embeddings.", "x"];
    let dir = std::env::temp_dir().join(format!("zhinao-serve-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let input = dir.join("in.txt");
    std::fs::write(&input, texts.join("\n")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .current_dir(ROOT)
        .args(["embed", "--model", "assets/tiny-bert", "--input"])
        .arg(&input)
        .args(["--output", "-"])
        .output()
        .expect("embed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Vec<Vec<f32>> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            serde_json::from_value(serde_json::from_str::<Value>(l).expect("jsonl")["embedding"].clone()).expect("vec")
        })
        .collect();
    let v = post(addr, "/v1/embeddings", &json!({ "model": "tiny-bert", "input": texts })).await;
    let mut worst = 0f32;
    for (i, want) in cli.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(v["data"][i]["embedding"].clone()).expect("vec");
        assert_eq!(got.len(), want.len());
        worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    eprintln!("embeddings: max |server - cli| = {worst:e}");
    assert!(worst <= 1e-6, "max abs difference {worst}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_equals_zhinao_rerank() {
    let addr = shared();
    let docs = ["北京是中国的首都。", "The cat sat on the mat.", "巴黎是法国的首都。"];
    let dir = std::env::temp_dir().join(format!("zhinao-serve-rerank-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join("docs.txt");
    std::fs::write(&f, docs.join("\n")).expect("write");
    let fs = f.to_string_lossy().to_string();
    let cli = zhinao(&["rerank", "--model", "assets/tiny-reranker", "--query", "中国的首都", "--docs", &fs, "--json"]);
    let jina =
        post(addr, "/v1/rerank", &json!({ "model": "tiny-reranker", "query": "中国的首都", "documents": docs })).await;
    let tei = post(addr, "/rerank", &json!({ "query": "中国的首都", "texts": docs, "raw_scores": true })).await;
    let want = cli["results"].as_array().expect("results");
    let mut worst = 0f64;
    for (k, w) in want.iter().enumerate() {
        assert_eq!(jina["results"][k]["index"], w["index"], "same order");
        assert_eq!(tei[k]["index"], w["index"], "same order");
        let d1 = (jina["results"][k]["relevance_score"].as_f64().unwrap_or(f64::NAN)
            - w["relevance"].as_f64().unwrap_or(0.0))
        .abs();
        let d2 = (tei[k]["score"].as_f64().unwrap_or(f64::NAN) - w["score"].as_f64().unwrap_or(0.0)).abs();
        worst = worst.max(d1).max(d2);
    }
    eprintln!("rerank: max |server - cli| = {worst:e}");
    assert!(worst <= 1e-6, "max abs difference {worst}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_a_disconnect_on_the_real_model() {
    common::ctx();
    let cfg = ServeConfig { max_queue: 8, ..test_config() };
    let opts = EngineOptions { embedding: None, rerank: None, ..options() };
    let server = spawn_server(cfg, loader(opts)).await;
    let addr = server.addr;
    wait_healthy(addr, Duration::from_secs(120)).await;
    let body = json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 3,
                       "temperature": 0, "stream": true });
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let o = open(addr, "/v1/chat/completions", &body).await;
                if o.status == 429 {
                    return None;
                }
                let evs = sse_events(o).await;
                Some(evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect::<String>())
            })
        })
        .collect();
    let mut texts = Vec::new();
    for t in tasks {
        if let Some(text) =
            tokio::time::timeout(Duration::from_secs(300), t).await.expect("a client hung").expect("task")
        {
            texts.push(text);
        }
    }
    eprintln!("real model, 64 clients: {} completed, {} got 429, {:?}", texts.len(), 64 - texts.len(), t0.elapsed());
    assert!(!texts.is_empty());
    assert!(texts.iter().all(|t| t == &texts[0]), "greedy outputs agree across concurrent requests");
    assert_eq!(http(addr, "GET", "/health", &[], b"").await.expect("health").status, 200);
    wait_metric(addr, "zhinao_queue_depth", 0.0, Duration::from_secs(5)).await;

    // A long generation, dropped after a few tokens, frees the engine within a step or two.
    let long = json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 480,
                       "temperature": 0, "stream": true });
    let mut o = open(addr, "/v1/chat/completions", &long).await;
    for _ in 0..4 {
        o.next_event().await.expect("event");
    }
    let generated = metric(addr, "zhinao_generated_tokens_total").await;
    drop(o);
    wait_metric(addr, "zhinao_requests_processing", 0.0, Duration::from_secs(10)).await;
    let after = metric(addr, "zhinao_generated_tokens_total").await;
    assert!(after - generated < 100.0, "generation went on after the disconnect: {} tokens", after - generated);
    assert_eq!(metric(addr, "zhinao_cancelled_total").await, 1.0);
    server.stop().await.expect("stop");
}

#[test]
fn generate_cancellable_stops_before_prefill_and_between_tokens() {
    use zhinao::engine::{generate, GenOptions, Session, StopReason};
    use zhinao::sampling::{Sampler, SamplingParams};
    let ctx = common::ctx();
    let m = zhinao::models::zhinao::Zhinao::load(ctx, &asset("tiny-zhinao"), &mut |_, _| {}).expect("load");
    let m = std::sync::Arc::new(m);
    let mut s = Session::new(m.clone(), 64, 4).expect("session");
    let generate_cancellable =
        |s: &mut Session, prompt: &[u32], max_new, sampler: &mut Sampler, cancel, on: &mut dyn FnMut(u32) -> bool| {
            generate(s, prompt, &GenOptions { max_new, stop_ids: &[], cancel: Some(cancel) }, sampler, on)
        };
    let prompt: Vec<u32> = (1..20).collect();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let cancel = AtomicBool::new(true);
    let g = generate_cancellable(&mut s, &prompt, 8, &mut sampler, &cancel, &mut |_| true).expect("run");
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert!(g.output_ids.is_empty());
    assert_eq!(s.pos(), 0, "no prefill chunk ran");
    // Cancelled from inside the token callback: one token, then the loop stops.
    s.reset();
    let cancel = AtomicBool::new(false);
    let g = generate_cancellable(&mut s, &prompt, 8, &mut sampler, &cancel, &mut |_| {
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        true
    })
    .expect("run");
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert_eq!(g.output_ids.len(), 1);
    // Steps queued ahead of the cancel may have fed the one token the caller saw, never more.
    let mut fed = prompt.clone();
    fed.extend(&g.output_ids);
    assert!(s.pos() <= fed.len() && s.tokens() == &fed[..s.pos()], "the cache holds only real tokens");
    // Not cancelled: prefilled chunk by chunk, the first token is the argmax of `forward` over the
    // whole prompt (which chunks internally).
    s.reset();
    let free = AtomicBool::new(false);
    let a = generate_cancellable(&mut s, &prompt, 6, &mut sampler, &free, &mut |_| true).expect("run");
    let mut s2 = Session::new(m.clone(), 64, 4).expect("session");
    let logits = s2.forward(&prompt, false).expect("forward");
    assert_eq!(a.output_ids[0], zhinao::sampling::argmax(&logits));
    assert_eq!(a.output_ids.len(), 6);
}

#[test]
fn sigterm_finishes_the_stream_in_flight_and_exits_zero() {
    common::ctx();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .current_dir(ROOT)
        .args(["serve", "--model", "assets/tiny-zhinao", "--port", "0", "--quiet", "--shutdown-grace", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zhinao serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr: SocketAddr = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the server never said it was ready");
        if let Some(rest) = line.split("ready on http://").nth(1) {
            break rest.split(':').take(2).collect::<Vec<_>>().join(":").parse().expect("address");
        }
    };
    assert!(addr.ip().is_loopback(), "binds 127.0.0.1 by default");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let body = json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 24, "temperature": 0,
                           "stream": true });
        let mut o = open(addr, "/v1/chat/completions", &body).await;
        o.next_event().await.expect("role chunk");
        o.next_event().await.expect("first token");
        let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(kill.success());
        let mut last = Value::Null;
        let mut done = false;
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(120), o.next_event()).await.expect("stalled") {
            let t = String::from_utf8(ev).expect("utf-8");
            match t.strip_prefix("data: ") {
                Some("[DONE]") => done = true,
                Some(d) => last = serde_json::from_str(d).expect("json"),
                None => {}
            }
        }
        assert!(done, "the stream ended with [DONE]");
        assert!(last["choices"][0]["finish_reason"].is_string(), "the stream finished normally: {last}");
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(err.contains("shutting down"), "{err}");
}

/// A `zhinao serve` child process, killed if a test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    /// Wait (bounded) for the exit status.
    fn exit_within(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            assert!(t0.elapsed() < limit, "{what}: the server was still running {limit:?} later");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn signal(&self, name: &str) {
        let kill = Command::new("kill").args([name, &self.0.id().to_string()]).status().expect("kill");
        assert!(kill.success());
    }
}

/// `zhinao serve --model assets/tiny-zhinao --port 0 ARGS`, once ready: the child, the address to
/// connect to, and its stderr lines.
fn serve_binary(args: &[&str]) -> (Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    common::ctx();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .current_dir(ROOT)
        .args(["serve", "--model", "assets/tiny-zhinao", "--port", "0", "--quiet"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zhinao serve");
    let (stdout, stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(etx.send(l))));
    let port: u16 = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the server never said it was ready");
        if let Some(rest) = line.split("ready on http://").nth(1) {
            let addr: SocketAddr = rest.split(':').take(2).collect::<Vec<_>>().join(":").parse().expect("address");
            break addr.port();
        }
    };
    (child, SocketAddr::from(([127, 0, 0, 1], port)), erx)
}

/// A client that sends a request head announcing 100 bytes of body, and one byte.
fn hold_a_request_open(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).expect("write");
    s
}

#[test]
fn sigterm_exits_after_the_grace_period_while_a_client_holds_a_request_open() {
    let (mut child, addr, _) =
        serve_binary(&["--shutdown-grace", "2", "--body-timeout", "600", "--header-timeout", "600"]);
    let _held = hold_a_request_open(addr);
    let _idle = std::net::TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    child.signal("-TERM");
    let status = child.exit_within(Duration::from_secs(20), "SIGTERM with --shutdown-grace 2");
    assert!(status.success(), "exit status {status}");
    assert!(t0.elapsed() >= Duration::from_millis(1500), "exited before the grace period: {:?}", t0.elapsed());
}

#[test]
fn a_second_signal_exits_at_once_and_a_public_bind_without_a_key_warns() {
    let (mut child, addr, stderr) = serve_binary(&["--host", "0.0.0.0", "--shutdown-grace", "300"]);
    let _held = hold_a_request_open(addr);
    std::thread::sleep(Duration::from_millis(300));
    child.signal("-TERM");
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("shutting down")) {
        lines.push(stderr.recv_timeout(Duration::from_secs(20)).expect("no 'shutting down' line after SIGTERM"));
    }
    child.signal("-INT");
    let status = child.exit_within(Duration::from_secs(5), "a second signal");
    assert_eq!(status.code(), Some(130), "exit status {status}");
    lines.extend(stderr.try_iter());
    let text = lines.join("\n");
    assert!(text.contains("without an API key"), "{text}");
}

/// `--parallel 4`: concurrent chat requests share decode steps (the batch-steps counter stays
/// well under the tokens generated) and each one's temperature-0 text equals what the one-at-a-time
/// server gives it; an embedding request runs between steps; a client that disconnects mid-stream
/// leaves the others' text unchanged; an over-long prompt is a 400 and the batch goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_generations_share_steps_and_match_one_at_a_time() {
    let solo = shared();
    let opts = EngineOptions { rerank: None, parallel: 4, ctx: Some(256), chunk: 16, ..options() };
    let server = spawn_server(test_config(), loader(opts)).await;
    let addr = server.addr;
    wait_healthy(addr, Duration::from_secs(120)).await;
    let bodies: Vec<Value> = ["你好", "hello there", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "why?", "x"]
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": q }], "temperature": 0,
                    "max_tokens": 16 + 6 * i, "stream": true })
        })
        .collect();
    let mut want = Vec::new();
    for b in &bodies {
        let mut plain = b.clone();
        plain["stream"] = json!(false);
        want.push(post(solo, "/v1/chat/completions", &plain).await["choices"][0]["message"]["content"].clone());
    }
    // One more client that leaves after two events.
    let mut quitter = open(addr, "/v1/chat/completions", &bodies[0]).await;
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            tokio::spawn(async move {
                let evs = sse_events(open(addr, "/v1/chat/completions", &body).await).await;
                evs.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect::<String>()
            })
        })
        .collect();
    quitter.next_event().await.expect("role chunk");
    quitter.next_event().await.expect("first token");
    drop(quitter);
    let emb = post(addr, "/v1/embeddings", &json!({ "model": "tiny-bert", "input": "between steps" })).await;
    assert!(emb["data"][0]["embedding"].as_array().is_some_and(|v| !v.is_empty()));
    let long = json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "word ".repeat(400) }],
                       "max_tokens": 4 });
    let r = http(addr, "POST", "/v1/chat/completions", &[], long.to_string().as_bytes()).await.expect("request");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    for (i, t) in tasks.into_iter().enumerate() {
        let text = tokio::time::timeout(Duration::from_secs(300), t).await.expect("a client hung").expect("task");
        assert_eq!(json!(text), want[i], "request {i}");
    }
    let generated = metric(addr, "zhinao_generated_tokens_total").await;
    let steps = metric(addr, "zhinao_batch_steps_total").await;
    eprintln!("--parallel 4: {generated} tokens in {steps} batched steps");
    assert!(generated >= 40.0 && steps < 0.75 * generated, "{generated} tokens in {steps} steps: no sharing");
    wait_metric(addr, "zhinao_requests_processing", 0.0, Duration::from_secs(10)).await;
    assert_eq!(metric(addr, "zhinao_cancelled_total").await, 1.0, "the client that left");
    server.stop().await.expect("stop");
}

/// `--kv-type q4` (no f16 sink): the one-at-a-time server decodes from the quantized cache — a
/// seeded sampled chat equals `zhinao generate --kv-type q4` with the same seed (and differs from the
/// f16 cache's text for this seed, so the option is not ignored). `--parallel 2 --kv-type q4` is
/// refused at load with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_kv_cache_serves_like_generate() {
    use zhinao::engine::KvFormat;
    common::ctx();
    let opts = EngineOptions { embedding: None, rerank: None, kv: KvFormat::Q4, kv_sink: Some(0), ..options() };
    let server = spawn_server(test_config(), loader(opts)).await;
    let addr = server.addr;
    wait_healthy(addr, Duration::from_secs(120)).await;
    let q = "你好，请介绍一下你自己";
    let body = json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": q }], "temperature": 1.0,
                       "seed": 7, "max_tokens": 24 });
    let text = post(addr, "/v1/chat/completions", &body).await["choices"][0]["message"]["content"].clone();
    let cli = |kv: &[&str]| -> Value {
        let base = ["generate", "--model", "assets/tiny-zhinao", "--prompt", q, "--chat", "--temperature", "1.0"];
        let args = [&base[..], &["--seed", "7", "--max-new-tokens", "24", "--json"], kv].concat();
        zhinao(&args)["text"].clone()
    };
    assert_eq!(text, cli(&["--kv-type", "q4", "--kv-sink", "0"]));
    assert_ne!(text, cli(&[]), "the f16 cache gives this seed the same text: pick another seed");
    server.stop().await.expect("stop");

    let out = Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .current_dir(ROOT)
        .args(["serve", "--model", "assets/tiny-zhinao", "--port", "0", "--parallel", "2", "--kv-type", "q4"])
        .output()
        .expect("run zhinao serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--kv-type q4 needs --parallel 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rerank_document_scores_as_zhinao_rerank() {
    let addr = shared();
    // Far beyond the reranker's 512 positions: both cut it the same way.
    let docs = ["北京是中国的首都。".repeat(200), "巴黎是法国的首都。".to_string()];
    let dir = std::env::temp_dir().join(format!("zhinao-serve-rerank-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let f = dir.join("docs.txt");
    std::fs::write(&f, docs.join("\n")).expect("write");
    let fs = f.to_string_lossy().to_string();
    let cli = zhinao(&["rerank", "--model", "assets/tiny-reranker", "--query", "中国的首都", "--docs", &fs, "--json"]);
    let tei = post(addr, "/rerank", &json!({ "query": "中国的首都", "texts": docs, "raw_scores": true })).await;
    for w in cli["results"].as_array().expect("results") {
        let got = tei.as_array().and_then(|a| a.iter().find(|r| r["index"] == w["index"])).expect("same documents");
        let d = (got["score"].as_f64().unwrap_or(f64::NAN) - w["score"].as_f64().unwrap_or(0.0)).abs();
        assert!(d <= 1e-6, "document {}: server {} cli {}", w["index"], got["score"], w["score"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `usage.prompt_tokens_details.cached_tokens` of one greedy chat request.
async fn cached_tokens(addr: SocketAddr, headers: &[(&str, &str)], salt: Option<&str>) -> u64 {
    let mut body = json!({ "model": "tiny-zhinao", "temperature": 0, "max_tokens": 2, "messages": [
        { "role": "system", "content": "You are the assistant of a bank. The vault code is 4711." },
        { "role": "user", "content": "你好" }] });
    if let Some(s) = salt {
        body["cache_salt"] = json!(s);
    }
    let r = http(addr, "POST", "/v1/chat/completions", headers, body.to_string().as_bytes()).await.expect("request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("no cached_tokens: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_reuses_a_prefix_only_within_a_tenant() {
    common::ctx();
    let opts = EngineOptions { embedding: None, rerank: None, ..options() };
    let s = spawn_server(test_config(), loader(opts)).await;
    wait_healthy(s.addr, Duration::from_secs(120)).await;
    let addr = s.addr;
    cached_tokens(addr, &[], Some("alice")).await;
    assert!(cached_tokens(addr, &[], Some("alice")).await > 0, "the same tenant reuses its prefix");
    assert_eq!(cached_tokens(addr, &[], Some("mallory")).await, 0, "another salt prefills the whole prompt");
    assert_eq!(cached_tokens(addr, &[("authorization", "Bearer k1")], None).await, 0, "another key too");
    assert!(cached_tokens(addr, &[("authorization", "Bearer k1")], None).await > 0);
    assert_eq!(cached_tokens(addr, &[], None).await, 0);
    assert!(cached_tokens(addr, &[], None).await > 0, "the single-tenant default stays fast");
    s.stop().await.expect("stop");
}

fn three_turns() -> Value {
    json!([
        { "role": "user", "content": "你好" },
        { "role": "assistant", "content": "你好！有什么可以帮你？" },
        { "role": "user", "content": "今天天气怎么样" },
        { "role": "assistant", "content": "今天晴天。" },
        { "role": "user", "content": "明天呢" },
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_history_is_kept_while_it_fits_and_reported_when_dropped() {
    let addr = shared();
    // max_tokens 8, 500 (near n_ctx 512) and none (max_new_tokens 1024 ≥ n_ctx): the same prompt.
    let mut counts = Vec::new();
    for max in [json!(8), json!(500), Value::Null] {
        let body = json!({ "model": "tiny-zhinao", "messages": three_turns(), "temperature": 0, "max_tokens": max });
        let r = http(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes()).await.expect("request");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-zhinao-truncated-messages"), None);
        let v = r.json();
        assert!(v.get("truncated_messages").is_none(), "{v}");
        counts.push(v["usage"]["prompt_tokens"].as_u64().unwrap_or(0));
    }
    assert!(counts.iter().all(|&c| c == counts[0]), "history lost with a large max_tokens: {counts:?}");
    let t = post(addr, "/tokenize", &json!({ "messages": three_turns() })).await;
    assert_eq!(t["count"].as_u64(), Some(counts[0]), "/tokenize agrees with the chat route");

    // A first exchange too long to keep beside room for the answer: dropped, and said so.
    let mut msgs = three_turns();
    let arr = msgs.as_array_mut().expect("array");
    arr.insert(0, json!({ "role": "assistant", "content": "一二三四五 ".repeat(100) }));
    arr.insert(0, json!({ "role": "user", "content": "长" }));
    let body = json!({ "model": "tiny-zhinao", "messages": msgs, "temperature": 0, "max_tokens": 4 });
    let r = http(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes()).await.expect("request");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-zhinao-truncated-messages"), Some("2"));
    let v = r.json();
    assert_eq!(v["truncated_messages"], 2);
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(counts[0]), "the three recent turns are kept");
    let mut s = body.clone();
    s["stream"] = json!(true);
    let o = open(addr, "/v1/chat/completions", &s).await;
    assert_eq!(
        o.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-zhinao-truncated-messages")).map(|(_, v)| v.as_str()),
        Some("2")
    );
    sse_events(o).await;
    let t = post(addr, "/tokenize", &json!({ "messages": msgs })).await;
    assert_eq!(t["truncated_messages"], 2);
    assert_eq!(t["count"].as_u64(), Some(counts[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_temperature_is_greedy() {
    let addr = shared();
    let chat = |t: Value| {
        json!({ "model": "tiny-zhinao", "messages": [{ "role": "user", "content": "你好，请介绍一下你自己" }],
                "temperature": t, "max_tokens": 12 })
    };
    let greedy = post(addr, "/v1/chat/completions", &chat(json!(0))).await;
    for t in [json!(1e-40), json!(1e-7), json!(5e-324)] {
        let v = post(addr, "/v1/chat/completions", &chat(t.clone())).await;
        assert_eq!(v["choices"][0]["message"], greedy["choices"][0]["message"], "temperature {t}");
    }
}
