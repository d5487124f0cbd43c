//! A sentence-transformers BERT directory whose `tokenizer.json` enables padding (Fixed 24) and
//! truncation (24), with `max_seq_length` 40 in `sentence_bert_config.json` and mean pooling in
//! `1_Pooling` (issue 9: the layout of all-MiniLM-L6-v2 and many published embedders), against
//! goldens from transformers' `BertModel` run with the attention mask
//! (`tools/fixtures/make_bert_padded.py`, `assets/goldens/tiny-bert-padded.*`). Mixed inputs:
//! English, accented Latin, CJK, emoji, a sentence over the limit, one between the file's
//! truncation and the limit, and one word.
//!
//! An engine that applied the file's padding embedded pad ids as text (cosine 0.1–0.9 against
//! the reference); one that applied the file's truncation cut two texts at 24 tokens.

mod common;

use std::path::PathBuf;

use common::*;
use zhinao::embed::{EmbedOptions, Embedder, Truncated};
use zhinao::loader::{Pooling, WeightFiles};
use zhinao::models::bert::{Batch, Bert};
use zhinao::tokenizer::BertTokenizer;

/// f32 weights stay f32 on the device and attention reads f32 K/V: f32 accumulation-order noise.
const HIDDEN_NMSE: f64 = 1e-8;
/// The issue asks for 0.9999; the engine holds ten times tighter.
const COSINE_MIN: f64 = 0.99999;
const MAX_SEQ: usize = 40;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-bert-padded")
}

struct Golden {
    texts: Vec<String>,
    /// Each text's ids without padding.
    ids: Vec<Vec<u32>>,
    /// What the tokenizer.json alone gives: every text padded (or cut) to 24 ids.
    file_ids: Vec<Vec<u32>>,
    tensors: WeightFiles,
}

impl Golden {
    fn load() -> Golden {
        let g = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/goldens");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(g.join("tiny-bert-padded.json")).unwrap()).unwrap();
        let texts = json["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        let lens: Vec<usize> =
            json["lengths"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let rows = |key: &str| -> Vec<Vec<u32>> {
            json[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
                .collect()
        };
        let ids = rows("input_ids").into_iter().zip(&lens).map(|(mut row, &n)| {
            row.truncate(n);
            row
        });
        let ids = ids.collect();
        Golden {
            texts,
            ids,
            file_ids: rows("file_padded_ids"),
            tensors: WeightFiles::open_file(&g.join("tiny-bert-padded.safetensors")).unwrap(),
        }
    }
    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.tensors.get(name).unwrap();
        (t.shape.clone(), t.to_f32_vec().unwrap())
    }
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

fn embedder(pooling: Option<Pooling>, budget: usize, truncate: bool) -> Embedder {
    let opts = EmbedOptions { pooling, max_batch_tokens: budget, truncate, ..Default::default() };
    Embedder::load(ctx(), &dir(), &opts, &mut |_, _| {}).unwrap()
}

/// The fixture's premise: the file alone pads every text to 24 ids (and cuts the long ones).
/// The engine's ids are the reference's, neither padded nor cut at the file's 24.
#[test]
fn tokenizer_json_padding_and_truncation_are_ignored() {
    let g = Golden::load();
    assert!(g.file_ids.iter().all(|r| r.len() == 24));
    let tok = BertTokenizer::from_model_dir(&dir(), MAX_SEQ).unwrap();
    assert!(tok.is_hf());
    for (b, (text, want)) in g.texts.iter().zip(&g.ids).enumerate() {
        let got = tok.encode(text).unwrap();
        assert_eq!(&got, want, "{text:?}");
        assert_ne!(got, g.file_ids[b], "{text:?}: the file's padded ids would pass too; the fixture proves nothing");
    }
    assert!(g.ids.iter().any(|ids| ids.len() > 24 && ids.len() < MAX_SEQ), "a text between the two limits");
    // Without the model's limit nothing is cut: the long text has more than 40 tokens.
    let full = tok.encode_full(&g.texts[4]).unwrap();
    assert!(full.len() > MAX_SEQ, "{}", full.len());
    assert_eq!(full[..MAX_SEQ - 1], g.ids[4][..MAX_SEQ - 1]);
}

/// The limit is sentence_bert_config's max_seq_length (40), not max_position_embeddings (64),
/// and over-long texts are reported (truncated) or refused (truncation off).
#[test]
fn limit_is_max_seq_length_and_truncation_is_reported() {
    let g = Golden::load();
    let e = embedder(None, 4096, true);
    assert_eq!(e.tokenizer.max_len, MAX_SEQ);
    assert!(e.limit_source.contains("max_seq_length"), "{}", e.limit_source);
    assert_eq!(e.pooling, Pooling::Mean, "1_Pooling/config.json sets mean pooling");
    let (seqs, truncated) = e.tokenize_texts(&g.texts, false).unwrap();
    assert_eq!(seqs, g.ids);
    assert_eq!(truncated.len(), 1);
    let Truncated { index, tokens } = truncated[0];
    assert_eq!(index, 4);
    assert!(tokens > MAX_SEQ);
    let strict = embedder(None, 4096, false);
    let err = strict.embed_texts(&g.texts, false).unwrap_err().to_string();
    assert!(err.contains("text 4") && err.contains(&format!("limit of {MAX_SEQ}")), "{err}");
    assert!(strict.embed_texts(&g.texts[..4], false).is_ok(), "texts within the limit pass");
}

/// last_hidden_state over each text's valid rows, as the golden's padded batch.
#[test]
fn hidden_state_parity_with_attention_mask() {
    let g = Golden::load();
    let m = Bert::load(ctx(), &dir(), &mut |_, _| {}).unwrap();
    let (shape, want) = g.tensor("last_hidden_state");
    let (s, c) = (shape[1], shape[2]);
    let refs: Vec<&[u32]> = g.ids.iter().map(|v| v.as_slice()).collect();
    let got = m.forward(&Batch::pad(&refs, 0).unwrap()).unwrap();
    let mut worst: f64 = 0.0;
    for (b, ids) in g.ids.iter().enumerate() {
        let r = b * s * c..(b * s + ids.len()) * c;
        worst = worst.max(nmse(&got[r.clone()], &want[r.clone()]));
        check(&format!("text {b}"), &got[r.clone()], &want[r], HIDDEN_NMSE);
    }
    eprintln!("tiny-bert-padded: worst last_hidden_state NMSE {worst:.3e}");
}

/// CLS and mean embeddings of every text: unit norm, cosine ≥ 0.99999, in one batch and in
/// batches of mixed lengths (a budget of 48 tokens); the mean pooling also unnormalised.
#[test]
fn embeddings_match_reference_cls_and_mean() {
    let g = Golden::load();
    for (pooling, name) in
        [(Some(Pooling::Cls), "cls_l2"), (Some(Pooling::Mean), "mean_pooled_l2"), (None, "mean_pooled_l2")]
    {
        for budget in [4096, 48] {
            let e = embedder(pooling, budget, true);
            let got = e.embed_texts(&g.texts, false).unwrap();
            assert_eq!(got.len(), g.texts.len());
            let mut worst = 1.0f64;
            for (b, v) in got.iter().enumerate() {
                let cos = cosine(v, &g.row(name, b));
                worst = worst.min(cos);
                assert!(cos >= COSINE_MIN, "{pooling:?} {name} budget {budget} text {b}: cosine {cos}");
                let norm: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{name} text {b}: norm {norm}");
            }
            eprintln!("{pooling:?} {name} budget {budget}: worst 1 - cosine {:.3e}", 1.0 - worst);
        }
    }
    let opts = EmbedOptions { pooling: Some(Pooling::Mean), normalize: false, ..Default::default() };
    let e = Embedder::load(ctx(), &dir(), &opts, &mut |_, _| {}).unwrap();
    for (b, v) in e.embed_texts(&g.texts, false).unwrap().iter().enumerate() {
        check(&format!("mean_pooled text {b}"), v, &g.row("mean_pooled", b), HIDDEN_NMSE);
    }
}

/// `zhinao embed` on the directory as a user runs it (default pooling from 1_Pooling: mean):
/// one output line per input line, blank line included, index = line number - 1, the over-long
/// line truncated with a warning; `--no-truncate` refuses it naming the line.
#[test]
fn cli_embed_sentence_transformers_dir() {
    let g = Golden::load();
    let tmp = std::env::temp_dir().join(format!("zhinao-embed-padded-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let input = tmp.join("in.txt");
    // Line 3 is blank: texts after it are shifted by one line.
    let mut lines: Vec<String> = g.texts.clone();
    lines.insert(2, String::new());
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zhinao"))
            .args(["embed", "--model"])
            .arg(dir())
            .arg("--input")
            .arg(&input)
            .args(["--output", "-"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("line 6") && stderr.contains("max_seq_length"), "{stderr}");
    assert!(stderr.contains("blank") && stderr.contains("line 3"), "{stderr}");
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), lines.len(), "one output line per input line");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"].as_u64(), Some(i as u64));
        let v: Vec<f32> = r["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let b = match i {
            2 => continue, // the blank line: embedded as "" (checked in tests/cli.rs)
            i if i < 2 => i,
            i => i - 1,
        };
        let cos = cosine(&v, &g.row("mean_pooled_l2", b));
        assert!(cos >= COSINE_MIN, "CLI line {}: cosine {cos}", i + 1);
    }
    let out = run(&["--no-truncate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 6") && stderr.contains("limit of 40") && !stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&tmp).ok();
}
