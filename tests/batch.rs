//! Continuous batching (`engine::batch`) on the tiny checkpoint, against lone sessions:
//!
//! - batch invariance: at temperature 0 every sequence's tokens equal its lone `generate`, with
//!   prompts of different lengths joining and leaving at different steps, on the fused GEMV step
//!   (≤ 4 slots) and the GEMM step (6 slots);
//! - seeded sampling: a sequence's tokens depend only on its prompt and seed (equal to the lone
//!   session's, with or without neighbours);
//! - cancelling one sequence leaves the others' tokens unchanged;
//! - chunked prefill: a long prompt joining never stalls the running sequences (each step still
//!   gives them a token);
//! - bad input (empty or over-long prompts, pools beyond the device) is a clear error.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use zhinao::engine::{generate, generate_batch, Batch, BatchJob, BatchOptions, GenOptions, Session, StopReason};
use zhinao::models::zhinao::Zhinao;
use zhinao::sampling::{Sampler, SamplingParams};

fn load() -> Arc<Zhinao> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao");
    Arc::new(Zhinao::load(ctx(), &dir, &mut |_, _| {}).unwrap())
}

const CTX: usize = 96;
const EOS: u32 = 3003;

/// Prompts of different lengths (1 to 40 tokens), deterministic ids below the vocabulary.
fn prompts() -> Vec<Vec<u32>> {
    [5usize, 1, 23, 9, 40, 14, 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|k| ((i * 977 + k * 131 + 17) % 3000) as u32).collect())
        .collect()
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed,
        ..SamplingParams::greedy()
    }
}

/// The lone session's tokens for `prompt` (fresh cache, same stop id and length).
fn alone(m: &Arc<Zhinao>, prompt: &[u32], params: &SamplingParams, max_new: usize) -> (Vec<u32>, StopReason) {
    let mut s = Session::new(m.clone(), CTX, 16).unwrap();
    let mut sampler = Sampler::new(params.clone());
    let opts = GenOptions { max_new, stop_ids: &[EOS], cancel: None };
    let g = generate(&mut s, prompt, &opts, &mut sampler, &mut |_| true).unwrap();
    (g.output_ids, g.stop_reason)
}

fn jobs(params: impl Fn(usize) -> SamplingParams) -> Vec<BatchJob> {
    // Different lengths: sequences leave at different steps, and later ones join as slots free.
    prompts()
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| BatchJob { prompt, params: params(i), max_new: [12, 30, 7, 20, 3, 25, 16][i] })
        .collect()
}

fn run_batch(m: &Arc<Zhinao>, parallel: usize, chunk: usize, jobs: &[BatchJob]) -> Vec<(Vec<u32>, StopReason)> {
    let mut b = Batch::new(m.clone(), BatchOptions { parallel, ctx_len: CTX, chunk }).unwrap();
    let mut order = Vec::new();
    let outs = generate_batch(&mut b, jobs, &[EOS], None, &mut |i, _| order.push(i)).unwrap();
    assert_eq!(order.len(), jobs.len(), "every job reported once");
    assert!(b.is_idle());
    outs.into_iter()
        .map(|o| {
            assert!(o.error.is_none(), "{:?}", o.error);
            (o.output_ids, o.stop_reason)
        })
        .collect()
}

#[test]
fn greedy_batch_equals_each_sequence_alone() {
    let m = load();
    let jobs = jobs(|_| SamplingParams::greedy());
    let want: Vec<_> = jobs.iter().map(|j| alone(&m, &j.prompt, &j.params, j.max_new)).collect();
    assert!(want.iter().any(|(ids, _)| ids.len() > 10), "the lone runs produce real continuations");
    // 3 slots: the fused GEMV step (B ≤ 4); 6 slots: GEMMs over 6 or 8 rows; chunk 4 spreads the
    // 40-token prompt over 10 steps while others decode.
    for (parallel, chunk) in [(3, 16), (6, 4), (1, 8)] {
        let got = run_batch(&m, parallel, chunk, &jobs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "sequence {i} with --parallel {parallel}, chunk {chunk}");
        }
    }
}

#[test]
fn seeded_sampling_depends_only_on_prompt_and_seed() {
    let m = load();
    let jobs = jobs(|i| sampled(1000 + i as u64));
    let want: Vec<_> = jobs.iter().map(|j| alone(&m, &j.prompt, &j.params, j.max_new)).collect();
    for parallel in [4, 2] {
        let got = run_batch(&m, parallel, 16, &jobs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "sequence {i} with --parallel {parallel}");
        }
    }
    // Another seed changes the sequence (the seed is used).
    let other = alone(&m, &jobs[1].prompt, &sampled(7), jobs[1].max_new);
    assert_ne!(other.0, want[1].0);
}

#[test]
fn cancelling_one_sequence_leaves_the_others_alone() {
    let m = load();
    let ps = prompts();
    let greedy = SamplingParams::greedy();
    let want: Vec<_> = ps[..3].iter().map(|p| alone(&m, p, &greedy, 20).0).collect();
    let mut b = Batch::new(m.clone(), BatchOptions { parallel: 3, ctx_len: CTX, chunk: 16 }).unwrap();
    let ids: Vec<_> = ps[..3].iter().map(|p| b.add(p, &greedy).unwrap()).collect();
    let mut got = vec![Vec::new(); 3];
    let mut done = [false; 3];
    let mut steps = 0;
    while !done.iter().all(|&d| d) {
        for p in b.step().unwrap() {
            let i = ids.iter().position(|&s| s == p.seq).unwrap();
            if done[i] {
                continue;
            }
            if p.token == EOS || got[i].len() == 20 {
                done[i] = true;
                b.cancel(p.seq);
                continue;
            }
            got[i].push(p.token);
            if got[i].len() == 20 {
                done[i] = true;
                b.cancel(p.seq);
            }
        }
        steps += 1;
        // Sequence 1 is cancelled mid-generation, after 4 of its tokens.
        if !done[1] && got[1].len() >= 4 {
            assert!(b.cancel(ids[1]));
            done[1] = true;
        }
        assert!(steps < 200, "the batch does not finish");
    }
    assert!(!b.cancel(ids[1]), "a cancelled sequence is gone");
    assert_eq!(got[0], want[0]);
    assert_eq!(got[2], want[2]);
    assert_eq!(got[1][..], want[1][..got[1].len()], "the cancelled one agreed until it left");
    assert!(b.is_idle());
}

#[test]
fn a_long_prompt_joining_does_not_stall_running_sequences() {
    let m = load();
    let greedy = SamplingParams::greedy();
    let mut b = Batch::new(m.clone(), BatchOptions { parallel: 2, ctx_len: CTX, chunk: 4 }).unwrap();
    let first = b.add(&[11, 12, 13], &greedy).unwrap();
    // Prefill of the 3-token prompt and its first token, then it decodes every step.
    assert!(b.step().unwrap().iter().any(|p| p.seq == first));
    let long: Vec<u32> = (0..60).map(|k| (k * 37 + 5) % 3000).collect();
    let second = b.add(&long, &greedy).unwrap();
    let mut joined_at = None;
    for step in 0..20 {
        let out = b.step().unwrap();
        assert!(out.iter().any(|p| p.seq == first), "step {step}: the running sequence got no token");
        if out.iter().any(|p| p.seq == second) && joined_at.is_none() {
            joined_at = Some(step);
        }
    }
    // 60 tokens in chunks of 4: the last chunk is the 15th step after it was added.
    assert_eq!(joined_at, Some(14));
    assert_eq!(b.running(), 2);
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = load();
    let greedy = SamplingParams::greedy();
    let mut b = Batch::new(m.clone(), BatchOptions { parallel: 2, ctx_len: 16, chunk: 8 }).unwrap();
    assert!(b.add(&[], &greedy).is_err());
    let e = b.add(&[1; 17], &greedy).unwrap_err().to_string();
    assert!(e.contains("17") && e.contains("16"), "{e}");
    assert!(b.add(&[5000], &greedy).unwrap_err().to_string().contains("vocabulary"));
    // A prompt that fills its slot gets exactly one token, then leaves with Context.
    let jobs = [
        BatchJob { prompt: vec![7; 16], params: greedy.clone(), max_new: 5 },
        BatchJob { prompt: vec![1; 17], params: greedy.clone(), max_new: 5 },
        BatchJob { prompt: vec![9, 10], params: greedy.clone(), max_new: 0 },
    ];
    let outs = generate_batch(&mut b, &jobs, &[], None, &mut |_, _| {}).unwrap();
    assert_eq!((outs[0].output_ids.len(), outs[0].stop_reason), (1, StopReason::Context));
    assert!(outs[1].error.as_deref().unwrap_or("").contains("17"), "{:?}", outs[1]);
    assert_eq!((outs[2].output_ids.len(), outs[2].stop_reason), (0, StopReason::Length));
    // Zero slots, a context past the model's, and a pool beyond one binding.
    let opts = |parallel, ctx_len| BatchOptions { parallel, ctx_len, chunk: 8 };
    assert!(Batch::new(m.clone(), opts(0, 16)).is_err());
    assert!(Batch::new(m.clone(), opts(1, 513)).is_err());
    let e = Batch::new(m.clone(), opts(1 << 20, 512)).err().unwrap().to_string();
    assert!(e.contains("--parallel"), "{e}");
}
