//! The `zhinao` binary end to end on the tiny checkpoint: generate (JSON and streaming), tokenize,
//! perplexity, and clear errors for bad input.

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
