//! The decode paths a user runs by default, through the public API only (`Session::new`,
//! `Session::forward` / `step`, `generate::generate`), so the tests survive refactors of the graph
//! and the model code:
//!
//! - every stop condition of `generate`: EOS (never emitted, never shown to `on_token`), length,
//!   a full context, cancellation by `on_token` returning false; on the GPU-argmax path and on the
//!   sampled (full-logits) path;
//! - the multi-split decode attention at a context of 4 splits (and with most splits empty),
//!   against the prefill path's logits at the same positions;
//! - the split-binding embedding gather and lm_head at the real vocabulary size (158464 rows,
//!   forced into 5 chunks with a small binding limit), against a CPU computation and an unsplit run.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use zhinao::engine::{generate, GenOptions, Session, Step, StopReason};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::loader::{WeightFiles, ZhinaoConfig};
use zhinao::models::zhinao::Zhinao;
use zhinao::ops::attention::decode_splits;
use zhinao::sampling::{Sampler, SamplingParams};
use zhinao::tensor::DType;
use zhinao::tokenizer::Tokenizer;

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao")
}

fn load_model() -> Zhinao {
    Zhinao::load(ctx(), &tiny_dir(), &mut |_, _| {}).unwrap()
}

fn load() -> Arc<Zhinao> {
    Arc::new(load_model())
}

/// Prompt p1 of the PyTorch goldens and its 24-token greedy continuation.
fn golden_p1() -> (Vec<u32>, Vec<u32>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/goldens/tiny-zhinao.json");
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    (ids(&g["prompts"][1]["ids"]), ids(&g["greedy"][1]["ids"]))
}

/// Runs `generate`, recording every token `on_token` saw; `stop_after` makes it return false on
/// that call (1-based).
fn run(
    s: &mut Session,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    params: SamplingParams,
    stop_after: Option<usize>,
) -> (Vec<u32>, StopReason, Vec<u32>) {
    let mut seen = Vec::new();
    let mut sampler = Sampler::new(params);
    let opts = GenOptions { max_new, stop_ids, cancel: None };
    let g = generate(s, prompt, &opts, &mut sampler, &mut |id| {
        seen.push(id);
        stop_after != Some(seen.len())
    })
    .unwrap();
    (g.output_ids, g.stop_reason, seen)
}

#[test]
fn generate_stop_conditions_greedy() {
    let m = load();
    let tok = Tokenizer::from_model_dir(tiny_dir()).unwrap();
    let (prompt, want) = golden_p1();
    let greedy = SamplingParams::greedy;
    // EOS: the 5th greedy token is a stop id; the first four come out, the stop id never does.
    let eos = want[4];
    assert!(!want[..4].contains(&eos));
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, seen) = run(&mut s, &prompt, 20, &[eos], greedy(), None);
    assert_eq!((out.as_slice(), why), (&want[..4], StopReason::Eos));
    assert_eq!(seen, out, "on_token never sees the stop id");
    assert_eq!(tok.decode(&out, true), tok.decode(&want[..4], true), "the text excludes the stop id");
    // EOS as the very first token: nothing at all.
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, seen) = run(&mut s, &prompt, 20, &[want[0], 99], greedy(), None);
    assert!(out.is_empty() && seen.is_empty() && why == StopReason::Eos);
    // The tokenizer's stop ids (<eod>, <|im_start|>, <|im_end|>) stop it too and are skipped.
    assert!(tok.stop_ids().iter().all(|id| !want.contains(id)));
    // Length.
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, _) = run(&mut s, &prompt, 5, &tok.stop_ids(), greedy(), None);
    assert_eq!((out.as_slice(), why), (&want[..5], StopReason::Length));
    // Context full: a cache of prompt + 5 positions holds 5 generated tokens; the 6th is sampled
    // from the last position's logits and is the last one.
    let ctx_len = prompt.len() + 5;
    let mut s = Session::new(m.clone(), ctx_len, 64).unwrap();
    let (out, why, _) = run(&mut s, &prompt, 100, &[], greedy(), None);
    assert_eq!((out.as_slice(), why), (&want[..6], StopReason::Context));
    assert_eq!(s.pos(), ctx_len);
    assert!(s.step(out[5], true).is_err(), "no room left");
    // Cancellation: on_token returns false on its 3rd call.
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, seen) = run(&mut s, &prompt, 20, &[], greedy(), Some(3));
    assert_eq!((out.as_slice(), why), (&want[..3], StopReason::Cancelled));
    assert_eq!(seen.len(), 3);
    // Cancelled at the first token.
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, _) = run(&mut s, &prompt, 20, &[], greedy(), Some(1));
    assert_eq!((out, why), (vec![want[0]], StopReason::Cancelled));
}

/// The same stop conditions with the CLI's default sampling (generation_config: temperature 1,
/// top_p 0.8, top_k off), which reads the full logits row every step.
#[test]
fn generate_stop_conditions_default_sampling() {
    let m = load();
    let (prompt, _) = golden_p1();
    let gen = zhinao::loader::GenerationConfig::load(&tiny_dir()).unwrap();
    let params = SamplingParams { seed: 11, ..SamplingParams::from_generation_config(&gen) };
    assert!(params.needs_logits() && params.top_k == 0 && params.top_p == 0.8 && params.temperature == 1.0);
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (free, why, _) = run(&mut s, &prompt, 12, &[], params.clone(), None);
    assert_eq!((free.len(), why), (12, StopReason::Length));
    // Seeded: the same run again gives the same tokens, and a stop id cuts it where it first occurs.
    let k = (1..12).find(|&k| !free[..k].contains(&free[k])).expect("a token not seen before");
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, seen) = run(&mut s, &prompt, 12, &[free[k]], params.clone(), None);
    assert_eq!((out.as_slice(), why), (&free[..k], StopReason::Eos));
    assert_eq!(seen, out);
    let mut s = Session::new(m.clone(), prompt.len() + 3, 64).unwrap();
    let (out, why, _) = run(&mut s, &prompt, 12, &[], params.clone(), None);
    assert_eq!((out.as_slice(), why), (&free[..4], StopReason::Context));
    let mut s = Session::new(m.clone(), 128, 64).unwrap();
    let (out, why, _) = run(&mut s, &prompt, 12, &[], params, Some(2));
    assert_eq!((out.as_slice(), why), (&free[..2], StopReason::Cancelled));
}

/// Decode steps at a context of 1024 (several splits of the flash-decoding attention), at cache lengths
/// where every split holds keys (901..940) and where most are empty (6..30), against the logits
/// the prefill attention computes for the same positions; the last steps also through the GPU
/// argmax.
#[test]
fn multi_split_decode_matches_prefill() {
    let mut m = load_model();
    m.decoder.cfg.max_position_embeddings = 2048; // RoPE has no table: the tiny model runs past its 512
    let m = Arc::new(m);
    let ctx_len = 1024;
    let cfg = m.cfg();
    let splits = decode_splits(cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim(), ctx_len);
    assert!(splits >= 4, "{splits} splits");
    let v = m.cfg().vocab_size;
    let mut rng = Rng::new(9);
    let ids: Vec<u32> = (0..940).map(|_| rng.below(3000)).collect();
    let mut a = Session::new(m.clone(), ctx_len, 256).unwrap();
    let all = a.forward(&ids, true).unwrap();
    assert_eq!(all.len(), ids.len() * v);
    let mut worst: f64 = 0.0;
    for (start, end) in [(5usize, 30usize), (900, 940)] {
        let mut b = Session::new(m.clone(), ctx_len, 256).unwrap();
        b.forward(&ids[..start], false).unwrap();
        for p in start..end {
            // The step for the token at position p gives the logits of position p.
            let want = &all[p * v..(p + 1) * v];
            match b.step(ids[p], p + 5 >= end).unwrap() {
                Step::Logits(row) => {
                    worst = worst.max(nmse(&row, want));
                    check(&format!("decode at position {p} (kv_len {})", p + 1), &row, want, DECODE_NMSE);
                }
                Step::Greedy(id) => assert_eq!(id, zhinao::sampling::argmax(want), "GPU argmax at {p}"),
            }
        }
    }
    eprintln!("multi-split decode vs prefill: worst logits NMSE {worst:.3e}");
}

/// Decode and prefill attention read the same f16 cache and differ only in the order of f32
/// sums (and GEMV vs GEMM in the projections): measured 5.4e-10 on lavapipe. A split whose
/// partial is lost or mis-weighted gives O(1e-2) and more.
const DECODE_NMSE: f64 = 1e-8;

/// The real 360Zhinao vocabulary: 158464 embedding and lm_head rows.
const REAL_VOCAB: usize = 158464;

/// tiny-zhinao with its embedding and lm_head padded to 158464 rows (the first 3072 are the
/// real ones, the rest random bf16), as an in-memory checkpoint.
fn real_vocab_checkpoint() -> (ZhinaoConfig, WeightFiles, Vec<u16>, Vec<u16>) {
    let mut cfg = ZhinaoConfig::load(&tiny_dir()).unwrap();
    let files = WeightFiles::open(&tiny_dir()).unwrap();
    let c = cfg.hidden_size;
    let mut rng = Rng::new(158);
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let (mut embed, mut head) = (Vec::new(), Vec::new());
    for name in files.names().map(str::to_string).collect::<Vec<_>>() {
        let t = files.get(&name).unwrap();
        let dtype = match t.dtype {
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::F32 => safetensors::Dtype::F32,
            other => panic!("{name}: {other}"),
        };
        let (mut shape, mut data) = (t.shape.clone(), t.data.to_vec());
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            assert_eq!((t.dtype, shape[1]), (DType::BF16, c));
            let extra = (REAL_VOCAB - shape[0]) * c;
            data.extend(rng.normals(extra, 0.5).iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()));
            shape[0] = REAL_VOCAB;
            let words: Vec<u16> = data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
            if name == "lm_head.weight" {
                head = words;
            } else {
                embed = words;
            }
        }
        tensors.push((name, dtype, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::tensor::serialize(views, None).unwrap();
    cfg.vocab_size = REAL_VOCAB;
    cfg.validate().unwrap();
    (cfg, WeightFiles::from_bytes("tiny-zhinao, vocab 158464", bytes).unwrap(), embed, head)
}

fn bf16(w: u16) -> f32 {
    half::bf16::from_bits(w).to_f32()
}

/// Embedding gather and lm_head at the real vocabulary, split into 5 chunks (an 8 MiB binding
/// limit; 128 MiB on lavapipe, 2 GiB on an H100, hold them whole): the gathered rows equal the
/// table's, the last position's logits equal a CPU lm_head over the final-norm state, the real
/// rows still match the PyTorch goldens, and the split run equals the unsplit one.
#[test]
fn split_binding_embedding_and_lm_head_at_real_vocab() {
    let (cfg, files, embed, head) = real_vocab_checkpoint();
    let c = cfg.hidden_size;
    let small = Context::new(&GpuOptions { max_binding: Some(8 << 20), ..Default::default() }).unwrap();
    let split = Arc::new(Zhinao::from_files(small, cfg.clone(), None, &files, &mut |_, _| {}).unwrap());
    let chunks = split.decoder.embed_tokens.chunks.len();
    assert!(chunks >= 5, "{chunks} chunks");
    assert!(split.lm_head.chunks.len() >= 5);
    let whole = Arc::new(Zhinao::from_files(ctx(), cfg.clone(), None, &files, &mut |_, _| {}).unwrap());
    assert_eq!(whole.decoder.embed_tokens.chunks.len(), 1, "lavapipe binds 128 MiB: one chunk");

    // Ids in every chunk, the last row included.
    let ids: Vec<u32> = vec![3009, 892, 40_000, 70_001, 100_002, 130_003, 158_463, 721];
    let mut a = Session::new(split.clone(), 64, 16).unwrap();
    let hidden = a.hidden_states(&ids).unwrap();
    for (t, &id) in ids.iter().enumerate() {
        let want: Vec<f32> = embed[id as usize * c..(id as usize + 1) * c].iter().map(|&w| bf16(w)).collect();
        assert_eq!(hidden[0][t * c..(t + 1) * c], want[..], "embedding row of id {id}");
    }
    // lm_head over every row: CPU final RMSNorm of the last layer's state, then x · W[v].
    let norm = files.get("model.norm.weight").unwrap().to_f32_vec().unwrap();
    let last = &hidden[cfg.num_hidden_layers][(ids.len() - 1) * c..];
    let ms = last.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / c as f64;
    let inv = 1.0 / (ms + cfg.rms_norm_eps).sqrt();
    let x: Vec<f64> = last.iter().zip(&norm).map(|(h, w)| *h as f64 * inv * *w as f64).collect();
    let cpu: Vec<f32> = (0..REAL_VOCAB)
        .map(|v| x.iter().zip(&head[v * c..(v + 1) * c]).map(|(a, &w)| a * bf16(w) as f64).sum::<f64>() as f32)
        .collect();
    // Every position's logits, split (13 rows per logits buffer) and whole.
    a.reset();
    let la = a.forward(&ids, true).unwrap();
    check("split lm_head vs CPU, last position, all 158464 rows", &la[(ids.len() - 1) * REAL_VOCAB..], &cpu, 1e-10);
    let mut b = Session::new(whole.clone(), 64, 16).unwrap();
    let lb = b.forward(&ids, true).unwrap();
    check("all logits, split vs whole", &la, &lb, 1e-12);
    // Decode steps: the GPU argmax over split logits equals the unsplit one.
    let mut next = zhinao::sampling::argmax(&la[(ids.len() - 1) * REAL_VOCAB..]);
    for _ in 0..2 {
        let (Step::Greedy(x), Step::Greedy(y)) = (a.step(next, true).unwrap(), b.step(next, true).unwrap()) else {
            unreachable!()
        };
        assert_eq!(x, y, "GPU argmax over split logits");
        next = x;
    }
    // The real rows still give the reference's logits (prompt p1 of the goldens).
    let (p1, want) = golden_p1();
    a.reset();
    let row = a.forward(&p1, false).unwrap();
    assert_eq!(zhinao::sampling::argmax(&row[..3072]), want[0]);
}

/// The CLI's chat, the app and Python build prompts with `Lm::chat_prompt`: a history that fits is
/// kept whatever `max_new` is (0.5.0 reserved the whole `max_new`, so near the context every earlier
/// turn vanished), and what does not fit is counted, oldest first, never dropped silently.
#[test]
fn chat_prompt_keeps_history_when_max_new_nears_the_context_and_counts_what_it_drops() {
    use zhinao::engine::{Lm, LmOptions};
    use zhinao::tokenizer::Message;
    let opts = LmOptions { ctx_len: Some(512), ..Default::default() };
    let lm = Lm::load(ctx(), &tiny_dir(), &opts, &mut |_, _| {}).unwrap();
    let three = [
        Message::new("user", "你好"),
        Message::new("assistant", "你好！有什么可以帮你？"),
        Message::new("user", "今天天气怎么样"),
    ];
    let (short, d_short) = lm.chat_prompt_report(&three, 8).unwrap();
    for max_new in [500, 1024, 4096] {
        let (long, d) = lm.chat_prompt_report(&three, max_new).unwrap();
        assert_eq!((long.len(), d), (short.len(), 0), "max_new {max_new}: history lost");
        assert_eq!(long, short);
    }
    assert_eq!(d_short, 0);
    // 40 long turns cannot fit 512 positions: the oldest go, in pairs, and are counted.
    let mut many: Vec<Message> = (0..40)
        .flat_map(|i| [Message::new("user", format!("问题 {i}: {}", "长".repeat(20))), Message::new("assistant", "好")])
        .collect();
    many.push(Message::new("user", "最后一个问题"));
    let (ids, dropped) = lm.chat_prompt_report(&many, 8).unwrap();
    assert!(dropped > 0 && dropped % 2 == 0 && dropped < 80, "dropped {dropped}");
    assert!(ids.len() <= 512 - zhinao::tokenizer::history_reserve(8, 512), "{} tokens", ids.len());
}
