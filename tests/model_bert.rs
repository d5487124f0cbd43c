//! BERT encoder and embedder (360Zhinao-search architecture, spec §6) against the HF `BertModel`
//! goldens (`assets/goldens/tiny-bert.{json,safetensors}`, tools/fixtures/make_fixtures.py): token
//! ids through both tokenizer paths, last_hidden_state per sequence, CLS and mean embeddings, both
//! weight formats (pytorch_model.bin and safetensors), batching independence, and the CLI.

mod common;

use std::path::PathBuf;

use common::*;
use zhinao::embed::{pack_by_tokens, pool, EmbedOptions, Embedder, ZHINAO_SEARCH_INSTRUCTION};
use zhinao::loader::{Pooling, WeightFiles};
use zhinao::models::bert::{Batch, Bert};
use zhinao::tokenizer::BertTokenizer;

/// Everything is f32 (attention reads f32 K/V), so the error is f32 accumulation-order noise:
/// per sequence, over the valid (unpadded) rows; padded rows are not compared (the engine leaves
/// them unspecified, HF computes them). Measured worst on lavapipe: printed by the parity tests.
const HIDDEN_NMSE: f64 = 1e-8;
const COSINE_MIN: f64 = 0.99999;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Golden {
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
    tensors: WeightFiles,
}

impl Golden {
    fn load() -> Golden {
        let dir = root().join("assets/goldens");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-bert.json")).unwrap()).unwrap();
        let texts = json["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        let mask = json["attention_mask"].as_array().unwrap();
        let ids = json["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(mask)
            .map(|(row, m)| {
                let n = m.as_array().unwrap().iter().filter(|v| v.as_u64() == Some(1)).count();
                row.as_array().unwrap()[..n].iter().map(|v| v.as_u64().unwrap() as u32).collect()
            })
            .collect();
        Golden { texts, ids, tensors: WeightFiles::open_file(&dir.join("tiny-bert.safetensors")).unwrap() }
    }
    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.tensors.get(name).unwrap();
        (t.shape.clone(), t.to_f32_vec().unwrap())
    }
    /// Row `b` of a [B, C] tensor.
    fn row(&self, name: &str, b: usize) -> Vec<f32> {
        let (shape, v) = self.tensor(name);
        v[b * shape[1]..(b + 1) * shape[1]].to_vec()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn model_dir(name: &str) -> PathBuf {
    root().join("assets").join(name)
}

fn load(name: &str) -> Bert {
    Bert::load(ctx(), &model_dir(name), &mut |_, _| {}).unwrap()
}

#[test]
fn token_ids_match_both_tokenizer_paths() {
    let g = Golden::load();
    for dir in ["tiny-bert", "tiny-bert-st"] {
        let json = BertTokenizer::from_model_dir(&model_dir(dir), 64).unwrap();
        assert!(json.is_hf());
        let vocab = BertTokenizer::from_vocab_txt(&model_dir(dir), 64).unwrap();
        assert!(!vocab.is_hf());
        for (text, want) in g.texts.iter().zip(&g.ids) {
            assert_eq!(&json.encode(text).unwrap(), want, "tokenizer.json: {text:?}");
            assert_eq!(&vocab.encode(text).unwrap(), want, "vocab.txt: {text:?}");
        }
    }
}

#[test]
fn wordpiece_basic_rules_and_truncation() {
    let tok = BertTokenizer::from_vocab_txt(&model_dir("tiny-bert"), 8).unwrap();
    let hf = BertTokenizer::from_tokenizer_json(&model_dir("tiny-bert").join("tokenizer.json"), 8).unwrap();
    // Accents stripped under do_lower_case, control chars dropped, specials kept whole,
    // truncation to 8 tokens including [CLS] and [SEP].
    for text in ["HÉLLO\u{0007}  Wörld!", "[MASK] hello", "hello world hello world hello world", "北京？ok", ""] {
        let a = tok.encode(text).unwrap();
        assert_eq!(a, hf.encode(text).unwrap(), "{text:?}");
        assert!(a.len() <= 8 && a[0] == tok.cls && *a.last().unwrap() == tok.sep, "{text:?}: {a:?}");
    }
}

/// last_hidden_state per sequence (valid rows) against the golden, for one weight format, both as
/// the golden's padded batch of 5 and one sequence at a time.
fn hidden_parity(dir: &str) {
    let m = load(dir);
    let g = Golden::load();
    let (shape, want) = g.tensor("last_hidden_state");
    let (s, c) = (shape[1], shape[2]);
    let refs: Vec<&[u32]> = g.ids.iter().map(|v| v.as_slice()).collect();
    let batch = Batch::pad(&refs, 0).unwrap();
    assert_eq!(batch.s, s);
    let got = m.forward(&batch).unwrap();
    let mut worst: f64 = 0.0;
    for (b, ids) in g.ids.iter().enumerate() {
        let n = ids.len();
        let w = &want[b * s * c..(b * s + n) * c];
        let e = nmse(&got[b * s * c..(b * s + n) * c], w);
        worst = worst.max(e);
        check(&format!("{dir} seq {b} (batched, S = {s})"), &got[b * s * c..(b * s + n) * c], w, HIDDEN_NMSE);
        let alone = m.forward(&Batch::pad(&[ids.as_slice()], 0).unwrap()).unwrap();
        worst = worst.max(nmse(&alone, w));
        check(&format!("{dir} seq {b} (alone)"), &alone, w, HIDDEN_NMSE);
    }
    eprintln!("{dir}: worst last_hidden_state NMSE {worst:.3e}");
    // Each shape bucket was recorded once; running the batch again replays it.
    let recorded = m.recordings();
    for _ in 0..3 {
        assert_eq!(m.forward(&batch).unwrap(), got, "{dir}: a replay gives the same hidden states");
    }
    assert_eq!(m.recordings(), recorded, "{dir}: replays must not record again");
}

#[test]
fn hidden_state_parity_pytorch_bin() {
    hidden_parity("tiny-bert");
}

#[test]
fn hidden_state_parity_safetensors() {
    hidden_parity("tiny-bert-st");
}

fn embedder(dir: &str, pooling: Pooling, budget: usize) -> Embedder {
    let opts = EmbedOptions { pooling: Some(pooling), max_batch_tokens: budget, ..Default::default() };
    Embedder::load(ctx(), &model_dir(dir), &opts, &mut |_, _| {}).unwrap()
}

#[test]
fn embeddings_cls_and_mean() {
    let g = Golden::load();
    for (pooling, name) in [(Pooling::Cls, "cls_l2"), (Pooling::Mean, "mean_pooled_l2")] {
        // A budget of 64 tokens forces several batches of mixed lengths.
        let e = embedder("tiny-bert-st", pooling, 64);
        let got = e.embed_texts(&g.texts, false).unwrap();
        assert_eq!(got.len(), g.texts.len());
        for (b, v) in got.iter().enumerate() {
            let want = g.row(name, b);
            let cos = cosine(v, &want);
            assert!(cos >= COSINE_MIN, "{name} text {b}: cosine {cos}");
            let norm: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name} text {b}: norm {norm}");
        }
    }
    // Without normalisation the mean pooling is the golden's unnormalised mean.
    let opts = EmbedOptions { pooling: Some(Pooling::Mean), normalize: false, ..Default::default() };
    let e = Embedder::load(ctx(), &model_dir("tiny-bert"), &opts, &mut |_, _| {}).unwrap();
    let got = e.embed_texts(&g.texts, false).unwrap();
    for (b, v) in got.iter().enumerate() {
        check(&format!("mean_pooled text {b}"), v, &g.row("mean_pooled", b), HIDDEN_NMSE);
    }
}

#[test]
fn batching_is_order_preserving_and_neighbour_independent() {
    let g = Golden::load();
    let e = embedder("tiny-bert", Pooling::Cls, 4096);
    let short = "hello world".to_string();
    let alone = e.embed_texts(std::slice::from_ref(&short), false).unwrap().remove(0);
    // The short text between long ones, in one padded batch (budget 4096 ≥ 7 × 30).
    let mut mixed = g.texts.clone();
    mixed.insert(2, short.clone());
    mixed.push(short.clone());
    let got = e.embed_texts(&mixed, false).unwrap();
    for i in [2, mixed.len() - 1] {
        let cos = cosine(&got[i], &alone);
        assert!(cos >= COSINE_MIN, "short text at {i} in a mixed batch: cosine {cos} vs alone");
        check(&format!("short text at {i}"), &got[i], &alone, HIDDEN_NMSE);
    }
    // Input order: every other text matches its own golden.
    for (i, t) in mixed.iter().enumerate() {
        if let Some(b) = g.texts.iter().position(|x| x == t) {
            assert!(cosine(&got[i], &g.row("cls_l2", b)) >= COSINE_MIN, "text {i} out of order");
        }
    }
}

#[test]
fn pack_by_tokens_covers_every_index_within_budget() {
    let lens = [3usize, 30, 7, 1, 30, 12, 5, 64];
    let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![1; n]).collect();
    let groups = pack_by_tokens(&seqs, 64);
    let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
    // The budget holds after the encoder's padding (S to ×32, B to a power of two).
    for g in &groups {
        let s = g.iter().map(|&i| lens[i]).max().unwrap();
        let padded = g.len().next_power_of_two() * s.div_ceil(32) * 32;
        assert!(padded <= 64 || g.len() == 1, "group {g:?} pads to {padded} tokens");
    }
    assert!(groups.len() < lens.len(), "short sequences share batches: {groups:?}");
    // 64 one-token texts: 64 rows of 32 before the fix (32× the budget), now 2 per batch.
    let ones = vec![vec![1u32]; 64];
    let groups = pack_by_tokens(&ones, 64);
    assert!(groups.iter().all(|g| g.len() == 2), "{groups:?}");
}

#[test]
fn pooling_and_query_instruction() {
    let rows = [1.0f32, 2.0, 3.0, 4.0]; // two rows of C = 2
    assert_eq!(pool(&rows, 2, Pooling::Cls, false), vec![1.0, 2.0]);
    assert_eq!(pool(&rows, 2, Pooling::Mean, false), vec![2.0, 3.0]);
    let n = pool(&rows, 2, Pooling::Cls, true);
    assert!((n[0] - 1.0 / 5f32.sqrt()).abs() < 1e-6);
    assert_eq!(zhinao::embed::query_instruction("zhinao-search"), ZHINAO_SEARCH_INSTRUCTION);
    // The golden's first text is the instruction + "北京今天天气很好": as a query with the
    // instruction it must equal the golden's first embedding.
    let g = Golden::load();
    let opts = EmbedOptions { query_instruction: Some(ZHINAO_SEARCH_INSTRUCTION.into()), ..Default::default() };
    let e = Embedder::load(ctx(), &model_dir("tiny-bert"), &opts, &mut |_, _| {}).unwrap();
    let text = vec![g.texts[0].trim_start_matches(ZHINAO_SEARCH_INSTRUCTION).to_string()];
    assert_eq!(e.tokenize(&text[0], true).unwrap(), g.ids[0]);
    assert_ne!(e.tokenize(&text[0], false).unwrap(), g.ids[0]);
    let q = e.embed_texts(&text, true).unwrap().remove(0);
    assert!(cosine(&q, &g.row("cls_l2", 0)) >= COSINE_MIN);
}

#[test]
fn cli_embed_end_to_end() {
    let g = Golden::load();
    let dir = std::env::temp_dir().join(format!("zhinao-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.txt");
    // Plain lines and JSONL lines mixed (detected per line).
    let mut lines = Vec::new();
    for (i, t) in g.texts.iter().enumerate() {
        lines.push(if i % 2 == 0 { t.clone() } else { serde_json::json!({ "text": t, "id": i }).to_string() });
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.join("out.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .args(["embed", "--model"])
        .arg(model_dir("tiny-bert"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::fs::read_to_string(&output).unwrap();
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), g.texts.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"].as_u64(), Some(i as u64));
        let v: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let cos = cosine(&v, &g.row("cls_l2", i));
        assert!(cos >= COSINE_MIN, "CLI row {i}: cosine {cos}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
