//! 360Zhinao-1.8B-Reranking (spec §7): the Zhinao decoder (`models::zhinao`, loaded without its
//! lm_head) plus a scalar head `linear` ([1, C] weight, optional [1] bias). The score of a
//! (query, passage) pair is `linear(norm(h_L)[p])` at one position `p` of the prompt built by
//! `tokenizer::reranker_input` (`Reranking/flag_models.py preprocess`), a raw logit; `sigmoid`
//! maps it to (0, 1). Reference: `tools/fixtures` (goldens `assets/goldens/tiny-reranker.*`).
//!
//! Execution: pairs are grouped into right-padded batches `[B, S]` (T = B·S rows) and run through
//! the shared decoder graph (`models::decoder::build` with `Kv::Batch`: RoPE restarts at each
//! sequence, causal attention with `lens` keeps pad rows out of every real row), then the B
//! selected residual rows are gathered and go through the final RMSNorm on the GPU; the 1×C head
//! is a dot product on the host. The 158k-row vocabulary projection is never loaded or computed.
//! Batches are rounded up to shape buckets (S to a multiple of 32, B to a power of two; pad
//! sequences have length 1 and are ignored), and each bucket's executable is recorded once and
//! replayed.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::graph::{ExeCache, Graph, WeightRef};
use crate::loader::config::ZhinaoConfig;
use crate::loader::{VarBuilder, WeightFiles};
use crate::models::decoder::{self, Decoder, Kv, Stack};
use crate::models::load::{Progress, Uploader};
use crate::ops;
use crate::tokenizer::{RerankInput, RerankPrompt, Tokenizer, RERANK_MAX_LEN};

/// Which prompt position's final hidden state feeds `linear`. The reference modeling file is not
/// public (spec §7 marks this **[UNCONFIRMED]**); the goldens hold `linear` at every position, so
/// each option is tested against the reference computation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScorePosition {
    /// The token just before the `"0"` placeholder label (the newline after
    /// `<|im_start|>assistant`), whose state predicts the label: `RerankInput::label_pos`.
    #[default]
    BeforeLabel,
    /// The `"0"` placeholder itself.
    Label,
    /// The last non-pad token (the trailing newline after `<|im_end|>`).
    LastToken,
}

impl ScorePosition {
    /// The row of `input` this option selects.
    pub fn index(self, input: &RerankInput) -> usize {
        match self {
            ScorePosition::BeforeLabel => input.label_pos,
            ScorePosition::Label => input.label_pos + 1,
            ScorePosition::LastToken => input.ids.len() - 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ScorePosition::BeforeLabel => "before-label",
            ScorePosition::Label => "label",
            ScorePosition::LastToken => "last",
        }
    }
}

impl FromStr for ScorePosition {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "before-label" => Ok(ScorePosition::BeforeLabel),
            "label" => Ok(ScorePosition::Label),
            "last" => Ok(ScorePosition::LastToken),
            _ => Err(Error::Input(format!("score position {s:?}: expected before-label, label or last"))),
        }
    }
}

/// One pair's score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// `linear(h)`: what the reference returns (`logits.view(-1).float()`).
    pub raw: f32,
    /// sigmoid(raw), in (0, 1).
    pub prob: f32,
}

impl Score {
    fn new(raw: f64) -> Score {
        Score { raw: raw as f32, prob: (1.0 / (1.0 + (-raw).exp())) as f32 }
    }
}

/// The `linear` head, kept on the host in f32: weight [C], bias (0 when absent).
#[derive(Clone, Debug)]
pub struct ScoreHead {
    pub weight: Vec<f32>,
    pub bias: f32,
}

impl ScoreHead {
    pub fn apply(&self, hidden: &[f32]) -> Score {
        let dot: f64 = hidden.iter().zip(&self.weight).map(|(&h, &w)| h as f64 * w as f64).sum();
        Score::new(dot + self.bias as f64)
    }
}

pub struct Reranker {
    pub backbone: Decoder,
    pub head: ScoreHead,
    /// Present when loaded from a model directory; needed by [`Reranker::score`].
    pub tokenizer: Option<Tokenizer>,
    /// Most rows (B·S, padding included) per forward pass; the default keeps every activation
    /// within one storage binding and at most 4096 rows.
    pub max_batch_tokens: usize,
    /// Id written into pad rows (`<eod>`, as the reference pads); any id works, since with the
    /// causal mask and `lens` no pad row reaches a real one.
    pub pad_id: u32,
    run: Mutex<Runner>,
}

/// The recorded forwards by (B, S) bucket and the external buffers they bind.
struct Runner {
    exes: ExeCache<(usize, usize)>,
    /// ids [T], lens [B], rows [B] (u32) and scored [B, C] (f32), for up to `rows` rows.
    externals: Vec<(String, GpuBuffer)>,
    rows: usize,
}

/// Rows per sequence of the bucket holding sequences of `s` tokens: a multiple of 32.
fn bucket_s(s: usize) -> usize {
    s.div_ceil(32) * 32
}

impl Reranker {
    /// Load a published model directory: `config.json`, the weights (`pytorch_model.bin` read
    /// without executing the pickle, or safetensors) and `vocab/360.tiktoken`.
    pub fn load(ctx: Arc<Context>, dir: &Path, progress: Progress) -> Result<Reranker> {
        let cfg = ZhinaoConfig::load(dir)?;
        let files = WeightFiles::open(dir)?;
        let mut r = Reranker::from_files(ctx, cfg, &files, progress)?;
        let tok = Tokenizer::from_model_dir(dir)?;
        r.pad_id = tok.eod();
        r.tokenizer = Some(tok);
        Ok(r)
    }

    /// The backbone (`model.*`) and `linear.*` from opened weight files; `lm_head.weight`, if
    /// present, is ignored.
    pub fn from_files(
        ctx: Arc<Context>,
        cfg: ZhinaoConfig,
        files: &WeightFiles,
        progress: Progress,
    ) -> Result<Reranker> {
        if cfg.quantization_config.is_some() {
            return Err(Error::Unsupported("a quantized reranker checkpoint".into()));
        }
        let c = cfg.hidden_size;
        let vb = VarBuilder::new(files);
        let lin = vb.pp("linear");
        let weight = lin.get(&[1, c], "weight")?.to_f32_vec()?;
        let bias = lin.get_opt(&[1], "bias")?.map(|b| b.to_f32_vec()).transpose()?.map_or(0.0, |b| b[0]);
        let skip = files.get("lm_head.weight").map(|t| t.data.len() as u64).unwrap_or(0);
        let mut up = Uploader::new(&ctx, None, files.total_bytes() as u64 - skip, progress);
        let backbone = Decoder::load(ctx.clone(), &mut up, &vb, cfg)?;
        ctx.sync()?;
        up.finish();
        Reranker::from_parts(backbone, ScoreHead { weight, bias })
    }

    /// A reranker from a backbone already on the GPU (benchmarks build one from random weights).
    pub fn from_parts(backbone: Decoder, head: ScoreHead) -> Result<Reranker> {
        let cfg = &backbone.cfg;
        let widest = [2 * cfg.intermediate_size, cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim()]
            .into_iter()
            .max()
            .unwrap_or(1);
        let fit = (backbone.ctx.limits.max_binding / (widest as u64 * 4)) as usize;
        let max_batch_tokens = fit.clamp(1, 4096);
        let run = Mutex::new(Runner { exes: ExeCache::new(8), externals: Vec::new(), rows: 0 });
        Ok(Reranker { backbone, head, tokenizer: None, max_batch_tokens, pad_id: 0, run })
    }

    /// How many forward graphs were recorded so far (each shape bucket once).
    pub fn recordings(&self) -> usize {
        self.run.lock().map(|r| r.exes.recordings()).unwrap_or(0)
    }

    /// The longest prompt: the reference's 1024, or the model's context when shorter.
    pub fn max_input_len(&self) -> usize {
        RERANK_MAX_LEN.min(self.backbone.cfg.max_position_embeddings)
    }

    /// The prompts of `query` with each passage (spec §7 input construction), each truncated to
    /// [`Self::max_input_len`], with its length before truncation when it was cut.
    pub fn inputs_checked(&self, query: &str, passages: &[String]) -> Result<Vec<(RerankInput, Option<usize>)>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("this reranker was built without a tokenizer".into()))?;
        let prompt = RerankPrompt::new(tok, query, self.max_input_len())?;
        passages.iter().map(|p| prompt.input(p)).collect()
    }

    /// The prompts of `query` with each passage, truncated as the reference does.
    pub fn inputs(&self, query: &str, passages: &[String]) -> Result<Vec<RerankInput>> {
        Ok(self.inputs_checked(query, passages)?.into_iter().map(|(i, _)| i).collect())
    }

    /// Scores of `query` against every passage, in the order given.
    pub fn score(&self, query: &str, passages: &[String], position: ScorePosition) -> Result<Vec<Score>> {
        self.score_inputs(&self.inputs(query, passages)?, position)
    }

    /// Scores of prepared prompts, in the order given.
    pub fn score_inputs(&self, inputs: &[RerankInput], position: ScorePosition) -> Result<Vec<Score>> {
        Ok(self.hidden_at(inputs, position)?.iter().map(|h| self.head.apply(h)).collect())
    }

    /// The final-norm hidden state [C] of each input at `position` (what `linear` sees).
    pub fn hidden_at(&self, inputs: &[RerankInput], position: ScorePosition) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<(&[u32], usize)> = inputs
            .iter()
            .map(|inp| {
                let p = position.index(inp);
                if p >= inp.ids.len() {
                    return Err(Error::Input(format!(
                        "score position {p} outside a prompt of {} tokens",
                        inp.ids.len()
                    )));
                }
                Ok((inp.ids.as_slice(), p))
            })
            .collect::<Result<_>>()?;
        self.hidden_rows(&rows)
    }

    /// The final-norm hidden state at row `p` of each `(ids, p)`. Sequences are sorted by length
    /// and packed into batches of at most `max_batch_tokens` rows (padding included).
    pub fn hidden_rows(&self, seqs: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
        let max_pos = self.backbone.cfg.max_position_embeddings;
        for (i, (ids, _)) in seqs.iter().enumerate() {
            if ids.is_empty() || ids.len() > max_pos {
                return Err(Error::ContextOverflow {
                    tokens: ids.len(),
                    ctx: max_pos,
                    hint: format!(" (pair {i}; the model's max_position_embeddings)"),
                });
            }
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].0.len()));
        let mut out = vec![Vec::new(); seqs.len()];
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            let s = bucket_s(seqs[rest[0]].0.len());
            let b = (self.max_batch_tokens / s).clamp(1, rest.len());
            let items: Vec<(&[u32], usize)> = rest[..b].iter().map(|&i| seqs[i]).collect();
            for (&i, h) in rest[..b].iter().zip(self.forward_batch(&items)?) {
                out[i] = h;
            }
            rest = &rest[b..];
        }
        Ok(out)
    }

    /// The forward over a right-padded batch [B, S] and the gathered, final-normed rows [B, C].
    fn graph(&self, b: usize, s: usize) -> Result<Graph> {
        let cfg = &self.backbone.cfg;
        let (c, eps) = (cfg.hidden_size, cfg.rms_norm_eps as f32);
        let stack = Stack {
            b,
            s,
            kv: Kv::Batch,
            decode: false,
            embed: true,
            h_external: false,
            layers: 0..cfg.num_hidden_layers,
            layout: self.backbone.layout(),
        };
        let mut g = Graph::default();
        let hs = decoder::build(&mut g, cfg, &stack)?;
        let rows = g.external("rows", (b * 4) as u64);
        let sel = g.tensor("selected", (b * c * 4) as u64);
        g.node("select", ops::elementwise::GatherRows { t: b * s, c, r: b }, &[hs, rows], &[sel]);
        let out = g.external("scored", (b * c * 4) as u64);
        g.node("norm", ops::norm::RmsNorm { weight: WeightRef::global("norm"), t: b, c, eps }, &[sel], &[out]);
        Ok(g)
    }

    /// One padded batch: a single submission, then the B selected rows' final-norm states.
    fn forward_batch(&self, items: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
        let m = &self.backbone;
        let ctx = &*m.ctx;
        let c = m.cfg.hidden_size;
        let b = items.len();
        let s_max = items.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        if b == 0 || s_max == 0 {
            return Err(Error::shape("reranker", format!("batch of {b}×{s_max} rows")));
        }
        // The shape bucket: S up to a multiple of 32 (within the model's positions), B up to a
        // power of two while the rows fit the batch budget. Pad sequences have length 1.
        let s = bucket_s(s_max).min(m.cfg.max_position_embeddings.max(s_max));
        let mut bb = b.next_power_of_two();
        while bb > b && bb * s > self.max_batch_tokens {
            bb /= 2;
        }
        let bb = bb.max(b);
        let t = bb * s;
        let mut ids = vec![self.pad_id; t];
        let mut lens = vec![1u32; bb];
        let mut rows = vec![0u32; bb];
        for (r, (seq, p)) in items.iter().enumerate() {
            ids[r * s..r * s + seq.len()].copy_from_slice(seq);
            lens[r] = seq.len() as u32;
            rows[r] = (r * s + p) as u32;
        }
        let mut run = self.run.lock().map_err(|_| Error::Device("reranker state poisoned".into()))?;
        if run.rows < t {
            // Room for the largest bucket seen so far (older executables bind the old buffers).
            let cap = t.max(self.max_batch_tokens.min(4 * t));
            let f = |name: &str, n: usize| -> Result<(String, GpuBuffer)> {
                Ok((name.to_string(), ctx.buffer(name, (n * 4) as u64)?))
            };
            // pos[0] = 0: every sequence of a batch starts empty (the buffer is zero-initialised).
            run.externals = vec![f("ids", cap)?, f("lens", cap)?, f("rows", cap)?, f("scored", cap * c)?, f("pos", 1)?];
            run.rows = cap;
            run.exes.clear();
        }
        let ext = |name: &str| run.externals.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
        let (Some(ids_b), Some(lens_b), Some(rows_b), Some(out_b)) =
            (ext("ids"), ext("lens"), ext("rows"), ext("scored"))
        else {
            return Err(Error::Device("reranker buffers missing".into()));
        };
        ctx.write(&ids_b, 0, bytemuck::cast_slice(&ids));
        ctx.write(&lens_b, 0, bytemuck::cast_slice(&lens));
        ctx.write(&rows_b, 0, bytemuck::cast_slice(&rows));
        let run = &mut *run;
        if run.exes.get(&(bb, s)).is_none() {
            let g = self.graph(bb, s)?;
            run.exes.insert(ctx, (bb, s), g, m, &run.externals)?;
        }
        let exe = run.exes.get(&(bb, s)).ok_or_else(|| Error::Device("reranker executable missing".into()))?;
        exe.run(ctx)?;
        let flat = ctx.read_f32(&out_b, 0, b * c)?;
        Ok(flat.chunks_exact(c).map(|r| r.to_vec()).collect())
    }
}
