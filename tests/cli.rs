//! The `zhinao` binary end to end on the tiny checkpoint: generate (JSON and streaming), tokenize,
//! perplexity, eval niah, and clear errors for bad input.

use std::process::Command;

fn zhinao(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zhinao")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn generate_json_matches_reference_greedy() {
    // Prompt p1 of the PyTorch goldens; greedy ids must equal the reference continuation.
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/goldens/tiny-zhinao.json")).unwrap(),
    )
    .unwrap();
    let p = &golden["prompts"][1]["ids"];
    let want: Vec<u64> = golden["greedy"][1]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let out = zhinao(&[
        "generate",
        "--model",
        "assets/tiny-zhinao",
        "--prompt-ids",
        &p.to_string(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let v = json(&out);
    let got: Vec<u64> = v["output_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(got, want[..8]);
    assert_eq!(v["prompt_ids"], *p);
    assert_eq!(v["stop_reason"], "length");
    assert!(v["timings"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["text"].is_string());
}

#[test]
fn chat_streaming_and_tokenize() {
    let out = zhinao(&[
        "generate",
        "--model",
        "assets/tiny-zhinao",
        "--prompt",
        "你好",
        "--chat",
        "--max-new-tokens",
        "4",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loading") && err.contains("tok/s"), "{err}");
    let all = json(&zhinao(&["tokenize", "--model", "assets/tiny-zhinao", "--json", "--text", "<|im_start|>a    b"]));
    let none = json(&zhinao(&[
        "tokenize",
        "--model",
        "assets/tiny-zhinao",
        "--json",
        "--no-special",
        "--text",
        "<|im_start|>a    b",
    ]));
    assert_eq!(all["ids"][0], 3009, "special recognised by default");
    assert!(
        none["ids"].as_array().unwrap().len() > all["ids"].as_array().unwrap().len(),
        "specials are text with --no-special"
    );
    assert_eq!(all["ids"].as_array().unwrap().len(), all["tokens"].as_array().unwrap().len());
}

#[test]
fn perplexity_json() {
    let v = json(&zhinao(&[
        "perplexity",
        "--model",
        "assets/tiny-zhinao",
        "--ids",
        "[3009, 892, 721, 1286, 283]",
        "--json",
        "--top-k",
        "3",
    ]));
    let pos = v["positions"].as_array().unwrap();
    assert_eq!(pos.len(), 5);
    assert!(pos[..4].iter().all(|p| p["logprob"].as_f64().unwrap() < 0.0));
    assert!(pos[4]["logprob"].is_null());
    assert_eq!(pos[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(pos[0]["top"][0][0], pos[0]["argmax"]);
    let ppl = v["ppl"].as_f64().unwrap();
    let mean: f64 = pos[..4].iter().map(|p| -p["logprob"].as_f64().unwrap()).sum::<f64>() / 4.0;
    assert!((ppl - mean.exp()).abs() < 1e-6 * ppl);

    // --kv-type / --kv-sink reach the session: five positions in a q4 cache whose f16 sink holds
    // them all give f16's numbers; with no sink they are quantized.
    let ppl_with = |kv: &[&str]| -> f64 {
        let ids = "[3009, 892, 721, 1286, 283]";
        let args = [&["perplexity", "--model", "assets/tiny-zhinao", "--ids", ids, "--json"][..], kv].concat();
        json(&zhinao(&args))["ppl"].as_f64().unwrap()
    };
    let sunk = ppl_with(&["--kv-type", "q4", "--kv-sink", "5"]);
    assert!((sunk - ppl).abs() < 1e-5 * ppl, "q4 with a 5-position sink: {sunk} vs f16 {ppl}");
    let plain = ppl_with(&["--kv-type", "q4", "--kv-sink", "0"]);
    assert!((plain - ppl).abs() > 1e-5 * ppl, "q4 without a sink equals f16: {plain}");
}

/// `perplexity --compare-kv f16` beside `--kv-type q4 --kv-sink 0` over several windows and
/// prefill chunks: both perplexities equal separate runs, the top-1 agreement is the share of
/// positions whose argmax the two separate runs agree on, the KL divergence is positive (and 0
/// against an identical cache); the chunk size does not change the result.
#[test]
fn perplexity_compare_kv_matches_separate_runs() {
    let text = "今天天气很好，我们去公园散步吧。The quick brown fox jumps over the lazy dog. ".repeat(3);
    let run = |extra: &[&str]| -> serde_json::Value {
        let base = ["perplexity", "--model", "assets/tiny-zhinao", "--text", &text, "--json", "--ctx", "40"];
        json(&zhinao(&[&base[..], extra].concat()))
    };
    let q4 = ["--kv-type", "q4", "--kv-sink", "0", "--chunk", "16"];
    let both = run(&[&q4[..], &["--compare-kv", "f16"]].concat());
    let alone = run(&q4);
    let f16 = run(&["--chunk", "16"]);
    let positions = |v: &serde_json::Value| v["positions"].as_array().unwrap().clone();
    let (pa, pf) = (positions(&alone), positions(&f16));
    assert!(pa.len() > 80 && pa.len() == pf.len(), "{} positions", pa.len());
    assert!(pa.iter().any(|p| p["window"] == 2), "several windows of 40");
    let c = &both["compare"];
    assert_eq!(
        (c["kv_type"].as_str(), both["kv_type"].as_str(), &both["kv_sink"]),
        (Some("f16"), Some("q4"), &0.into())
    );
    assert_eq!(both["ppl"], alone["ppl"]);
    assert_eq!(c["ppl"], f16["ppl"]);
    let agree = pa.iter().zip(&pf).filter(|(a, b)| a["argmax"] == b["argmax"]).count() as f64 / pa.len() as f64;
    assert!((c["top1_agreement"].as_f64().unwrap() - agree).abs() < 1e-12, "{c} vs {agree}");
    let (mean, max) = (c["mean_kl"].as_f64().unwrap(), c["max_kl"].as_f64().unwrap());
    assert!(mean > 0.0 && max >= mean, "{c}");
    // Against an identical cache: full agreement, no divergence.
    let same = run(&["--chunk", "16", "--compare-kv", "f16"]);
    assert_eq!(same["compare"]["top1_agreement"], 1.0);
    assert!(same["compare"]["max_kl"].as_f64().unwrap() < 1e-9, "{}", same["compare"]);
    // One pass per window instead of chunks of 16: the same perplexity.
    let whole = run(&[]);
    let (a, b) = (whole["ppl"].as_f64().unwrap(), f16["ppl"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-5 * b, "{a} vs {b}");
}

#[test]
fn bad_input_is_a_clear_error() {
    for (args, want) in [
        (vec!["generate", "--model", "/nonexistent", "--prompt", "x"], "/nonexistent"),
        (vec!["generate", "--model", "assets/tiny-zhinao", "--prompt-ids", "[1, 2"], "JSON list"),
        (vec!["generate", "--model", "assets/tiny-zhinao", "--prompt-ids", "[999999]"], "outside the vocabulary"),
        (
            vec!["generate", "--model", "assets/tiny-zhinao", "--prompt-ids", "[1]", "--ctx", "100000"],
            "max_position_embeddings",
        ),
        (vec!["devices", "--backend", "nonsense"], "unknown backend"),
        (
            vec![
                "generate",
                "--model",
                "assets/tiny-zhinao",
                "--prompt-ids",
                "[1]",
                "--kv-type",
                "q4",
                "--kv-sink",
                "99999999999",
            ],
            "sink",
        ),
    ] {
        let out = zhinao(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn chat_session_over_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["chat", "--model", "assets/tiny-zhinao", "--max-new-tokens", "3", "--temperature", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("你好\n:stream\n\"\"\"\nline one\nline two\n\"\"\"\n:clear\n:exit\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("Assistant>").count(), 2, "{stdout}");
    assert!(stderr.contains("(streaming off)") && stderr.contains("(history cleared)"), "{stderr}");
    assert_eq!(stderr.matches("tok/s]").count(), 2, "{stderr}");
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory for one test's input files.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("zhinao-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every command that takes `--model` says the directory does not exist (it used to report a
/// missing tokenizer, which sent users looking for one).
#[test]
fn missing_model_path_is_named_by_every_command() {
    let d = scratch("missing");
    let input = d.join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let input = input.to_str().unwrap();
    let m = "/no/such/dir";
    for args in [
        vec!["generate", "--model", m, "--prompt", "x"],
        vec!["chat", "--model", m],
        vec!["tokenize", "--model", m, "--text", "x"],
        vec!["perplexity", "--model", m, "--text", "x"],
        vec!["embed", "--model", m, "--input", input, "--output", "-"],
        vec!["rerank", "--model", m, "--query", "q", "--docs", input],
        vec!["eval", "retrieval", "--model", m, "--data", "assets/eval/retrieval"],
        vec!["eval", "rerank", "--model", m, "--data", "assets/eval/rerank"],
        vec!["bench", "generate", "--model", m],
    ] {
        let out = zhinao(&args);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains("/no/such/dir: no such model directory"), "{args:?}: {err}");
        assert!(!err.contains("tokenizer") && !err.contains("panicked"), "{args:?}: {err}");
    }
    // A file where a directory is expected.
    let err = stderr_of(&zhinao(&["generate", "--model", "README.md", "--prompt", "x"]));
    assert!(err.contains("not a directory"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// A model of the wrong kind is named as such: `embed` on a causal LM used to fail with
/// "unsupported: BERT hidden_act 'silu'", `generate` on a BERT directory with a hidden_act error.
#[test]
fn wrong_model_kind_is_named_by_every_command() {
    let d = scratch("kind");
    let input = d.join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let input = input.to_str().unwrap();
    for (args, want) in [
        (vec!["embed", "--model", "assets/tiny-zhinao", "--input", input, "--output", "-"], "not an embedding model"),
        (
            vec!["eval", "retrieval", "--model", "assets/tiny-zhinao", "--data", "assets/eval/retrieval"],
            "not an embedding model",
        ),
        (vec!["generate", "--model", "assets/tiny-bert", "--prompt", "x"], "is an embedding model"),
        (vec!["chat", "--model", "assets/tiny-bert"], "is an embedding model"),
        (vec!["perplexity", "--model", "assets/tiny-bert-st", "--text", "x"], "is an embedding model"),
        (vec!["rerank", "--model", "assets/tiny-bert", "--query", "q", "--docs", input], "is an embedding model"),
        (
            vec!["eval", "rerank", "--model", "assets/tiny-bert", "--data", "assets/eval/rerank"],
            "is an embedding model",
        ),
        (vec!["rerank", "--model", "assets/tiny-zhinao", "--query", "q", "--docs", input], "not a 360Zhinao reranker"),
    ] {
        let out = zhinao(&args);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("hidden_act") && !err.contains("panicked"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Embeddings of `zhinao embed` on `lines`, by output row (index checked against the row).
fn embed_rows(name: &str, lines: &str, extra: &[&str]) -> (Vec<Vec<f64>>, String) {
    let d = scratch(name);
    let input = d.join("in.txt");
    std::fs::write(&input, lines).unwrap();
    let mut args = vec!["embed", "--model", "assets/tiny-bert", "--input", input.to_str().unwrap(), "--output", "-"];
    args.extend(extra);
    let out = zhinao(&args);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let rows: Vec<Vec<f64>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["index"].as_u64(), Some(i as u64), "row {i} out of place");
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect();
    std::fs::remove_dir_all(&d).ok();
    (rows, err)
}

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// Every input line gives one output line whose index is its line number - 1: `alpha`, blank,
/// `beta` gives `beta` at index 2 (it used to be 1), and the blank line is the empty string.
#[test]
fn embed_keeps_blank_lines_in_place() {
    let (rows, err) = embed_rows("blank", "alpha\n\nbeta\n", &[]);
    assert_eq!(rows.len(), 3);
    assert!(err.contains("blank") && err.contains("line 2"), "{err}");
    let (other, _) = embed_rows("blank2", "beta\n{\"text\": \"\"}\nalpha\n", &[]);
    assert!(same(&rows[0], &other[2]), "alpha");
    assert!(same(&rows[1], &other[1]), "the blank line is the empty string");
    assert!(same(&rows[2], &other[0]), "beta");
    assert!(!same(&rows[0], &rows[2]));
}

/// An input over the model's limit is truncated with a warning naming the line (the result is
/// the embedding of the truncated text); `--no-truncate` refuses it, naming the line.
#[test]
fn embed_over_long_input_truncates_or_refuses() {
    let long = ["hello world"; 80].join(" "); // 160 pieces, the limit is 64 tokens
    let cut = ["hello world"; 31].join(" "); // 62 pieces: exactly what fits
    let (rows, err) = embed_rows("long", &format!("short\n{long}\n{cut}\n"), &[]);
    assert_eq!(rows.len(), 3);
    assert!(err.contains("warning") && err.contains("line 2") && err.contains("limit of 64"), "{err}");
    assert!(!err.contains("line 3"), "line 3 fits: {err}");
    assert!(same(&rows[1], &rows[2]), "the long line is embedded as its first 62 pieces");
    let d = scratch("long-strict");
    let input = d.join("in.txt");
    std::fs::write(&input, format!("short\n{long}\n")).unwrap();
    let out = zhinao(&[
        "embed",
        "--model",
        "assets/tiny-bert",
        "--input",
        input.to_str().unwrap(),
        "--output",
        "-",
        "--no-truncate",
    ]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("line 2") && err.contains("162 tokens") && err.contains("truncation is off"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// `zhinao rerank` with a document far over the tiny reranker's 512-token context: truncated
/// with a warning (it used to stop everything with "prompt of 976 tokens does not fit the context
/// of 512"), every document scored, blank lines kept in place; `--no-truncate` refuses it.
#[test]
fn rerank_over_long_document_truncates_or_refuses() {
    let d = scratch("rerank");
    let docs = d.join("docs.txt");
    let long = ["北京今天天气很好 the weather in beijing is good"; 100].join(" ");
    std::fs::write(&docs, format!("a short document\n\n{long}\nanother one\n")).unwrap();
    let docs = docs.to_str().unwrap();
    let args = ["rerank", "--model", "assets/tiny-reranker", "--query", "天气", "--docs", docs, "--json"];
    let out = zhinao(&args);
    let err = stderr_of(&out);
    let v = json(&out);
    let mut idx: Vec<u64> = v["results"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    idx.sort();
    assert_eq!(idx, [0, 1, 2, 3], "every line scored, in place");
    assert!(err.contains("warning") && err.contains("line 3") && err.contains("512"), "{err}");
    assert!(err.contains("blank") && err.contains("line 2"), "{err}");
    let out = zhinao(&[&args[..], &["--no-truncate"]].concat());
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("line 3") && err.contains("truncation is off") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// `zhinao tokenize` on BERT directories (WordPiece tokenizer.json, one with padding configured,
/// and vocab.txt): it used to fail with "token … is not byte-level BPE".
#[test]
fn tokenize_bert_directories() {
    for dir in ["assets/tiny-bert", "assets/tiny-bert-st", "assets/tiny-bert-padded"] {
        let v = json(&zhinao(&["tokenize", "--model", dir, "--json", "--text", "Hello world 北京"]));
        let tokens: Vec<&str> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tokens, ["[CLS]", "hello", "world", "北", "京", "[SEP]"], "{dir}");
        assert_eq!(v["ids"].as_array().unwrap().len(), 6, "{dir}: no padding");
        let bare = json(&zhinao(&["tokenize", "--model", dir, "--json", "--no-special", "--text", "Hello world"]));
        assert_eq!(bare["tokens"], serde_json::json!(["hello", "world"]), "{dir}");
    }
}

/// `eval niah` end to end on the tiny checkpoint (random weights: the score is meaningless, the
/// plumbing is not): every cell at its exact length, the JSON on stdout and in --out, the SVG.
/// The reference's chat frame, needle and question take 88 (en) / 73 (zh) tiny-vocab tokens, so
/// the shortest length here is 128; 64 is refused as too short.
#[test]
fn eval_niah_grid_end_to_end() {
    let d = scratch("niah");
    let out = d.to_str().unwrap();
    let base = ["eval", "niah", "--model", "assets/tiny-zhinao", "--depths", "0,50,100", "--kv-type", "q8"];
    let v = json(&zhinao(
        &[&base[..], &["--lengths", "128,192", "--max-new-tokens", "4", "--json", "--out", out]].concat(),
    ));
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 2 * 3, "en and zh × 2 lengths × 3 depths");
    for c in cells {
        assert_eq!(c["prompt_tokens"], c["length"]);
        assert!(c["answer"].is_string() && c["answer_tokens"].as_u64().unwrap() <= 4);
        let s = c["score"].as_f64().unwrap();
        assert!(s == 0.0 || s == 1.0);
        assert_eq!(s == 1.0, c["answer"].as_str().unwrap().contains(c["value"].as_str().unwrap()));
    }
    assert_eq!(v["kv_type"], "q8");
    assert_eq!(v["kv_sink"], 16, "the default f16 sink of a quantized cache");
    assert_eq!(v["model"], "tiny-zhinao");
    assert_eq!(v["summary"]["per_length"].as_array().unwrap().len(), 2);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("niah.json")).unwrap()).unwrap();
    assert_eq!(file["cells"], v["cells"]);
    let svg = std::fs::read_to_string(d.join("niah.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<rect class=\"cell\"").count(), 12);
    assert!(svg.contains("tiny-zhinao") && svg.contains("KV q8"));

    // Above the model's 512 positions: refused before loading, naming the length and the limit.
    let bad = zhinao(&[&base[..], &["--lengths", "128,1024", "--out", out]].concat());
    let err = stderr_of(&bad);
    assert!(
        !bad.status.success() && err.contains("1024") && err.contains("512") && err.contains("maximum context"),
        "{err}"
    );
    // Too short for the chat frame, needle and question.
    let short = zhinao(&[&base[..], &["--lengths", "64", "--lang", "en", "--out", out]].concat());
    let err = stderr_of(&short);
    assert!(!short.status.success() && err.contains("no room for a haystack"), "{err}");
}

/// `generate --batch-file`: one JSON line per input in input order (ids echoed), each equal to a
/// lone `generate --json` of the same prompt at temperature 0 (the PyTorch golden for p1), a chat
/// line through the template, per-line max_tokens, and error lines (bad JSON, a prompt longer than
/// --ctx, two prompt fields) that leave the others running.
#[test]
fn generate_batch_file_matches_lone_generations_in_input_order() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/goldens/tiny-zhinao.json")).unwrap(),
    )
    .unwrap();
    let p1 = golden["prompts"][1]["ids"].clone();
    let want_p1: Vec<u64> =
        golden["greedy"][1]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let lines = [
        serde_json::json!({ "id": "golden", "prompt_ids": p1 }).to_string(),
        serde_json::json!({ "id": 2, "prompt": "你好，世界", "max_tokens": 5 }).to_string(),
        "{not json".to_string(),
        serde_json::json!({ "id": "long", "prompt_ids": vec![7; 80] }).to_string(),
        String::new(),
        serde_json::json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 12 }).to_string(),
        serde_json::json!({ "prompt": "a", "prompt_ids": [1] }).to_string(),
    ];
    let dir = std::env::temp_dir().join(format!("zhinao-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let common = ["--model", "assets/tiny-zhinao", "--temperature", "0", "--ctx", "64"];
    let mut args =
        vec!["generate", "--batch-file", input.to_str().unwrap(), "--parallel", "3", "--max-new-tokens", "8"];
    args.extend(common);
    let out = zhinao(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i, "{r}");
    }
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["output_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
    };
    assert_eq!(rows[0]["id"], "golden");
    assert_eq!(ids(&rows[0]), want_p1[..8]);
    assert_eq!(rows[1]["id"], 2);
    assert!(rows[2]["error"].as_str().unwrap().contains("JSON"), "{}", rows[2]);
    assert!(rows[3]["error"].as_str().unwrap().contains("80"), "{}", rows[3]);
    assert!(rows[5]["error"].as_str().unwrap().contains("exactly one"), "{}", rows[5]);
    // The text and chat lines equal lone runs of the same prompts.
    for (row, extra) in [
        (1, vec!["--prompt", "你好，世界", "--max-new-tokens", "5"]),
        (4, vec!["--chat", "--prompt", "hi", "--max-new-tokens", "12"]),
    ] {
        let mut a = vec!["generate", "--json"];
        a.extend(common);
        a.extend(extra);
        let lone = json(&zhinao(&a));
        assert_eq!(rows[row]["output_ids"], lone["output_ids"], "line {row}");
        assert_eq!(rows[row]["stop_reason"], lone["stop_reason"], "line {row}");
        assert_eq!(rows[row]["text"], lone["text"], "line {row}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bench generate --batch`: the batched-decode benchmark runs end to end and reports the aggregate
/// and batch-1 rates measured in the same run (lavapipe: a smoke test, not a figure).
#[test]
fn bench_generate_batch_reports_both_rates() {
    let out = zhinao(&[
        "bench",
        "generate",
        "--model",
        "assets/tiny-zhinao",
        "--batch",
        "3",
        "--prompt-len",
        "8",
        "--gen",
        "4",
        "--json",
    ]);
    let v = json(&out);
    assert_eq!(v["batch"], 3);
    assert!(v["decode_tokens_per_second"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["batch1_decode_tokens_per_second"].as_f64().unwrap() > 0.0, "{v}");
}
