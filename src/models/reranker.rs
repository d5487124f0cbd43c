//! 360Zhinao-1.8B-Reranking (spec §7): the Zhinao decoder (`models::zhinao`, loaded without its
//! lm_head) plus a scalar head `linear` ([1, C] weight, optional [1] bias). The score of a
//! (query, passage) pair is `linear(norm(h_L)[p])` at one position `p` of the prompt built by
//! `tokenizer::reranker_input` (`Reranking/flag_models.py preprocess`), a raw logit; `sigmoid`
//! maps it to (0, 1). Reference: `tools/fixtures` (goldens `assets/goldens/tiny-reranker.*`).
//!
//! Execution: pairs are grouped into right-padded batches `[B, S]` (T = B·S rows). Every layer
//! runs on all T rows in one submission: RoPE restarts at each sequence, the KV of one layer sits
//! in a `[B·S, Hkv, D]` cache reused by every layer, and causal attention with `lens` keeps pad
//! rows out of every real row. Afterwards only the B selected residual rows are copied out, go
//! through the final RMSNorm on the GPU, and the 1×C head is a dot product on the host. The
//! 158k-row vocabulary projection is never loaded or computed.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::loader::config::ZhinaoConfig;
use crate::loader::{VarBuilder, WeightFiles};
use crate::models::zhinao::{Progress, Zhinao};
use crate::ops;
use crate::ops::attention::{self, AttnShape};
use crate::tokenizer::{reranker_input, RerankInput, Tokenizer};

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
    pub backbone: Zhinao,
    pub head: ScoreHead,
    /// Present when loaded from a model directory; needed by [`Reranker::score`].
    pub tokenizer: Option<Tokenizer>,
    /// Most rows (B·S, padding included) per forward pass; the default keeps every activation
    /// within one storage binding and at most 4096 rows.
    pub max_batch_tokens: usize,
    /// Id written into pad rows (`<eod>`, as the reference pads); any id works, since with the
    /// causal mask and `lens` no pad row reaches a real one.
    pub pad_id: u32,
}

/// Activation buffers for up to `rows` = B·S rows, reused by every layer and batch.
struct Acts {
    rows: usize,
    ids: GpuBuffer,  // [T] u32
    lens: GpuBuffer, // [B] u32, B ≤ T
    pos0: GpuBuffer, // [1] u32 = 0: attention's pos0 (positions restart per sequence)
    h: GpuBuffer,    // [T, C] residual stream
    x: GpuBuffer,    // [T, C] normed
    q: GpuBuffer,    // [T, H·D]
    k: GpuBuffer,    // [T, Hkv·D]
    v: GpuBuffer,    // [T, Hkv·D]
    ck: GpuBuffer,   // [T, Hkv, D/2] u32 (f16 pairs): one layer's keys
    cv: GpuBuffer,   // [T, Hkv, D/2] u32
    attn: GpuBuffer, // [T, H·D]
    gu: GpuBuffer,   // [T, 2I]
    act: GpuBuffer,  // [T, I]
    sel: GpuBuffer,  // [B, C] the selected residual rows
    out: GpuBuffer,  // [B, C] their final-norm states
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
        let vb = VarBuilder::new(files).pp("linear");
        let weight = vb.get(&[1, c], "weight")?.to_f32_vec()?;
        let bias = vb.get_opt(&[1], "bias")?.map(|b| b.to_f32_vec()).transpose()?.map_or(0.0, |b| b[0]);
        let backbone = Zhinao::backbone_from_files(ctx, cfg, None, files, progress)?;
        Ok(Reranker::from_parts(backbone, ScoreHead { weight, bias }))
    }

    /// A reranker from a backbone already on the GPU (benchmarks build one from random weights).
    pub fn from_parts(backbone: Zhinao, head: ScoreHead) -> Reranker {
        let cfg = &backbone.cfg;
        let widest = [2 * cfg.intermediate_size, cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim()]
            .into_iter()
            .max()
            .unwrap_or(1);
        let fit = (backbone.ctx.limits.max_binding / (widest as u64 * 4)) as usize;
        Reranker { backbone, head, tokenizer: None, max_batch_tokens: fit.clamp(1, 4096), pad_id: 0 }
    }

    /// The prompts of `query` with each passage (spec §7 input construction).
    pub fn inputs(&self, query: &str, passages: &[String]) -> Result<Vec<RerankInput>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("this reranker was built without a tokenizer".into()))?;
        passages.iter().map(|p| reranker_input(tok, query, p)).collect()
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
        let mut batches: Vec<&[usize]> = Vec::new();
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            let s = seqs[rest[0]].0.len();
            let b = (self.max_batch_tokens / s).clamp(1, rest.len());
            batches.push(&rest[..b]);
            rest = &rest[b..];
        }
        let Some(widest) = batches.iter().map(|b| b.len() * seqs[b[0]].0.len()).max() else {
            return Ok(Vec::new());
        };
        let acts = self.acts(widest)?;
        let mut out = vec![Vec::new(); seqs.len()];
        for batch in batches {
            let items: Vec<(&[u32], usize)> = batch.iter().map(|&i| seqs[i]).collect();
            for (&i, h) in batch.iter().zip(self.forward_batch(&acts, &items)?) {
                out[i] = h;
            }
        }
        Ok(out)
    }

    fn acts(&self, rows: usize) -> Result<Acts> {
        let cfg = &self.backbone.cfg;
        let ctx = &*self.backbone.ctx;
        let (c, d, h, hkv, i) =
            (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size);
        let f = |label: &str, n: usize| ctx.buffer(label, (n * 4) as u64);
        let cache = (rows * attention::cache_row_bytes(hkv, d)) as u64;
        Ok(Acts {
            rows,
            ids: f("ids", rows)?,
            lens: f("lens", rows)?,
            pos0: f("pos0", 1)?,
            h: f("h", rows * c)?,
            x: f("x", rows * c)?,
            q: f("q", rows * h * d)?,
            k: f("k", rows * hkv * d)?,
            v: f("v", rows * hkv * d)?,
            ck: ctx.buffer("k cache", cache)?,
            cv: ctx.buffer("v cache", cache)?,
            attn: f("attn", rows * h * d)?,
            gu: f("gu", rows * 2 * i)?,
            act: f("act", rows * i)?,
            sel: f("selected rows", rows * c)?,
            out: f("scored states", rows * c)?,
        })
    }

    /// One padded batch: a single submission for the decoder stack, then the B selected rows.
    fn forward_batch(&self, a: &Acts, items: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
        let m = &self.backbone;
        let cfg = &m.cfg;
        let ctx = &*m.ctx;
        let (c, d, h, hkv, i) =
            (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps as f32;
        let (b, s) = (items.len(), items.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0));
        let t = b * s;
        if t == 0 || t > a.rows {
            return Err(Error::shape("reranker", format!("batch of {b}×{s} rows for buffers of {} rows", a.rows)));
        }
        // Right padding with <eod> as the reference does; pad rows never reach a real row.
        let mut ids = vec![self.pad_id; t];
        for (r, (seq, _)) in items.iter().enumerate() {
            ids[r * s..r * s + seq.len()].copy_from_slice(seq);
        }
        let lens: Vec<u32> = items.iter().map(|(seq, _)| seq.len() as u32).collect();
        ctx.write(&a.ids, 0, bytemuck::cast_slice(&ids));
        ctx.write(&a.lens, 0, bytemuck::cast_slice(&lens));

        let mut ds: Vec<Dispatch> = ops::embedding::embedding(ctx, &m.embed_tokens, &ids, &a.ids, &a.h)?;
        let shape = AttnShape { b, s, h, hkv, d, kv_stride: s, q_stride: h * d, causal: true };
        for layer in &m.layers {
            ds.push(ops::norm::rms_norm(ctx, &a.h, None, t, c, &layer.input_layernorm, eps, &a.x)?);
            ds.extend(layer.q_proj.record(ctx, &a.x, t, Some(&layer.q_bias), &a.q, false)?);
            ds.extend(layer.k_proj.record(ctx, &a.x, t, Some(&layer.k_bias), &a.k, false)?);
            ds.extend(layer.v_proj.record(ctx, &a.x, t, Some(&layer.v_bias), &a.v, false)?);
            ds.push(ops::rope::rope_qkv_batch(ctx, &a.q, t, h, 0, d, s, &m.inv_freq)?);
            ds.push(ops::rope::rope_qkv_batch(ctx, &a.k, t, hkv, 0, d, s, &m.inv_freq)?);
            ds.push(attention::kv_write(ctx, &a.k, &a.v, t, hkv, d, 0, &a.ck, &a.cv, t)?);
            ds.push(attention::prefill(ctx, &a.q, &a.ck, &a.cv, &a.pos0, &a.attn, &shape, Some(&a.lens))?);
            ds.extend(layer.o_proj.record(ctx, &a.attn, t, None, &a.h, true)?);
            ds.push(ops::norm::rms_norm(ctx, &a.h, None, t, c, &layer.post_attention_layernorm, eps, &a.x)?);
            ds.extend(layer.gate_up.record(ctx, &a.x, t, None, &a.gu, false)?);
            ds.push(ops::elementwise::silu_mul(ctx, &a.gu, t, i, &a.act)?);
            ds.extend(layer.down_proj.record(ctx, &a.act, t, None, &a.h, true)?);
        }
        ctx.run(&ds.iter().collect::<Vec<_>>())?;
        // Gather the scored rows (queued after the forward), final norm on those B rows only.
        let row = (c * 4) as u64;
        for (r, &(_, p)) in items.iter().enumerate() {
            ctx.copy(&a.h, (r * s + p) as u64 * row, &a.sel, r as u64 * row, row);
        }
        let norm = ops::norm::rms_norm(ctx, &a.sel, None, b, c, &m.norm, eps, &a.out)?;
        ctx.run(&[&norm])?;
        let flat = ctx.read_f32(&a.out, 0, b * c)?;
        Ok(flat.chunks_exact(c).map(|r| r.to_vec()).collect())
    }
}
