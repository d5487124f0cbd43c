//! The 360Zhinao decoder: `ZhinaoForCausalLM` up to its final RMSNorm, shared by the causal LM
//! (`models::zhinao`, + lm_head) and the reranker (`models::reranker`, + a scalar head on selected
//! rows). A LLaMA-style pre-norm stack: RMSNorm → attention (one fused `qkv_proj` with bias,
//! interleaved per KV head, spec §2.3; NeoX RoPE with f32 inverse frequencies; GQA) → residual →
//! RMSNorm → SwiGLU MLP → residual. 360Zhinao2 (GQA, 8 KV heads) is the same code with other sizes.
//! Reference: `tools/fixtures/zhinao_ref.py`; the file's shape follows candle's `qwen2.rs`.
//!
//! At load the fused qkv is split into Q, K and V (attention reads contiguous tensors) and gate/up
//! are stacked into one `[2I, C]` weight (one matmul for both). The forward is a graph ([`build`])
//! that the executor plans and records; [`Decoder`] resolves its weight names.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::graph::{Graph, TensorId, WeightRef, Weights};
use crate::loader::config::ZhinaoConfig;
use crate::loader::{QkvHeads, VarBuilder};
use crate::models::kv::KvSpec;
use crate::models::load::Uploader;
use crate::ops::{self, attention::AttnShape};
use crate::tensor::{Linear, Weight};

/// One decoder layer (`model.layers.{l}`). Norm weights and biases are f32.
pub struct Layer {
    pub input_layernorm: GpuBuffer,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub q_bias: Option<GpuBuffer>,
    pub k_bias: Option<GpuBuffer>,
    pub v_bias: Option<GpuBuffer>,
    pub o_proj: Linear,
    pub post_attention_layernorm: GpuBuffer,
    /// gate_proj and up_proj stacked: [2I, C].
    pub gate_up: Linear,
    pub down_proj: Linear,
}

impl Layer {
    fn load(up: &mut Uploader, vb: &VarBuilder, cfg: &ZhinaoConfig) -> Result<Layer> {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        let heads = QkvHeads::new(cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim())?;
        let attn = vb.pp("self_attn");
        let ([q_proj, k_proj, v_proj], [q_bias, k_bias, v_bias]) = up.qkv(&attn.pp("qkv_proj"), &heads, c)?;
        let nh = cfg.num_attention_heads * cfg.head_dim();
        Ok(Layer {
            input_layernorm: up.vector(&vb.pp("input_layernorm"), c, "weight")?,
            q_proj,
            k_proj,
            v_proj,
            q_bias,
            k_bias,
            v_bias,
            o_proj: up.linear(&attn, &["o_proj"], c, nh)?,
            post_attention_layernorm: up.vector(&vb.pp("post_attention_layernorm"), c, "weight")?,
            gate_up: up.linear(&vb.pp("mlp"), &["gate_proj", "up_proj"], i, c)?,
            down_proj: up.linear(&vb.pp("mlp"), &["down_proj"], c, i)?,
        })
    }

    fn linears(&self) -> [&Linear; 6] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_up, &self.down_proj]
    }
}

/// The decoder stack on the device: `model.embed_tokens`, `model.layers.*`, `model.norm`.
pub struct Decoder {
    pub cfg: ZhinaoConfig,
    pub ctx: Arc<Context>,
    pub embed_tokens: Weight,
    pub layers: Vec<Layer>,
    pub norm: GpuBuffer,
    /// RoPE inverse frequencies θ^(−2i/D), i < D/2, computed in f32.
    pub inv_freq: GpuBuffer,
}

impl Decoder {
    /// Load `model.*` from `vb` (the checkpoint root).
    pub fn load(ctx: Arc<Context>, up: &mut Uploader, vb: &VarBuilder, cfg: ZhinaoConfig) -> Result<Decoder> {
        cfg.validate()?;
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let m = vb.pp("model");
        let embed_tokens = up.table(&m.pp("embed_tokens"), v, c)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| Layer::load(up, &m.pp("layers").pp(l), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = up.vector(&m.pp("norm"), c, "weight")?;
        let inv_freq = ctx.upload_f32("inv_freq", &ops::rope::inv_freq(cfg.rope_theta as f32, cfg.head_dim()))?;
        Ok(Decoder { cfg, ctx, embed_tokens, layers, norm, inv_freq })
    }

    /// Whether the layers' qkv_proj has a bias.
    pub fn qkv_bias(&self) -> bool {
        self.layers.first().is_none_or(|l| l.q_bias.is_some())
    }

    /// Bytes of weights on the device (embedding table and every layer's Linears).
    pub fn weight_bytes(&self) -> u64 {
        self.embed_tokens.bytes() + self.layers.iter().flat_map(|l| l.linears()).map(|w| w.bytes()).sum::<u64>()
    }

    fn layer(&self, r: &WeightRef) -> Result<&Layer> {
        r.layer.and_then(|l| self.layers.get(l)).ok_or_else(|| unknown(r))
    }
}

impl Weights for Decoder {
    fn linear(&self, r: &WeightRef) -> Result<&Linear> {
        let l = self.layer(r)?;
        Ok(match r.name {
            "q_proj" => &l.q_proj,
            "k_proj" => &l.k_proj,
            "v_proj" => &l.v_proj,
            "o_proj" => &l.o_proj,
            "gate_up" => &l.gate_up,
            "down_proj" => &l.down_proj,
            _ => return Err(unknown(r)),
        })
    }
    fn table(&self, r: &WeightRef) -> Result<&Weight> {
        match (r.layer, r.name) {
            (None, "embed_tokens") => Ok(&self.embed_tokens),
            _ => Err(unknown(r)),
        }
    }
    fn vector(&self, r: &WeightRef) -> Result<&GpuBuffer> {
        match (r.layer, r.name) {
            (None, "norm") => return Ok(&self.norm),
            (None, "inv_freq") => return Ok(&self.inv_freq),
            _ => {}
        }
        let l = self.layer(r)?;
        let bias = match r.name {
            "input_layernorm" => return Ok(&l.input_layernorm),
            "post_attention_layernorm" => return Ok(&l.post_attention_layernorm),
            "q_bias" => &l.q_bias,
            "k_bias" => &l.k_bias,
            "v_bias" => &l.v_bias,
            _ => return Err(unknown(r)),
        };
        bias.as_ref().ok_or_else(|| unknown(r))
    }
}

pub(crate) fn unknown(r: &WeightRef) -> Error {
    Error::MissingTensor { name: format!("{r:?}"), looked_in: "the loaded model".into() }
}

// ---- the forward pass as a graph ----------------------------------------------------------------

/// Where a forward's keys and values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kv {
    /// One sequence (B = 1) continuing a session of up to `ctx_len` positions: its paged cache
    /// (`models::kv`: arenas `k_cache.{l}.{a}` / `v_cache.{l}.{a}`, any KV format); the position of
    /// the first token is pos[0].
    Cache { ctx_len: usize, spec: KvSpec },
    /// A right-padded batch of B fresh sequences of S rows whose true lengths are the external
    /// `lens` [B] u32: positions restart at 0 in every sequence, the causal mask and `lens` keep
    /// pad rows out of real ones, and K/V live in pooled `[B·S, Hkv, D]` buffers.
    Batch,
}

/// Which part of the decoder a graph runs, on which rows.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Sequences B and rows per sequence S (T = B·S rows).
    pub b: usize,
    pub s: usize,
    pub kv: Kv,
    /// One token (T = 1) with split-K decode attention instead of the prefill kernel.
    pub decode: bool,
    /// Start from the token embedding of the external `ids` [T] u32 (else from the external `h`).
    pub embed: bool,
    /// The residual stream is the external `h` [T, C] (read when `!embed`, written when `embed`:
    /// layer-by-layer debugging), else a pooled tensor.
    pub h_external: bool,
    /// The layers to run.
    pub layers: Range<usize>,
    /// Whether qkv_proj has a bias (360Zhinao's does; read from the loaded weights).
    pub qkv_bias: bool,
}

impl Stack {
    /// The whole stack over one sequence chunk of `t` tokens continuing a cache of `ctx_len` rows.
    pub fn session(t: usize, ctx_len: usize, spec: KvSpec, decode: bool, layers: usize) -> Stack {
        Stack {
            b: 1,
            s: t,
            kv: Kv::Cache { ctx_len, spec },
            decode,
            embed: true,
            h_external: false,
            layers: 0..layers,
            qkv_bias: true,
        }
    }
}

fn w(layer: usize, name: &'static str) -> WeightRef {
    WeightRef::layer(layer, name)
}

/// Add the decoder (as `stack` says) to `g`; returns the residual stream `h` [T, C] after the last
/// layer. External tensors: `pos` [1] u32 (pos[0] = tokens already in the cache), `ids` [T] u32
/// (with `embed`), `h` [T, C] (with `h_external`), `k_cache.{l}` / `v_cache.{l}` (Kv::Cache) or
/// `lens` [B] u32 (Kv::Batch).
pub fn build(g: &mut Graph, cfg: &ZhinaoConfig, stack: &Stack) -> Result<TensorId> {
    let (c, d, h, hkv, i) =
        (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size);
    let (b, s) = (stack.b, stack.s);
    let t = b * s;
    let bad = |msg: String| Err(Error::Input(msg));
    if t == 0 || stack.layers.end > cfg.num_hidden_layers {
        return bad(format!("{b}×{s} rows, layers {:?} of {}", stack.layers, cfg.num_hidden_layers));
    }
    match stack.kv {
        Kv::Cache { ctx_len, .. } if b != 1 || s > ctx_len || (stack.decode && s != 1) => {
            return bad(format!("{t} tokens (decode: {}) for a context of {ctx_len}", stack.decode));
        }
        Kv::Batch if stack.decode => return bad("decode attention needs a session cache".into()),
        _ => {}
    }
    let eps = cfg.rms_norm_eps as f32;
    let f32s = |n: usize| (n * 4) as u64;
    let mut hs = if stack.h_external { g.external("h", f32s(t * c)) } else { g.tensor("h", f32s(t * c)) };
    if stack.embed {
        let ids = g.external("ids", f32s(t));
        let table = WeightRef::global("embed_tokens");
        g.node("embed_tokens", ops::embedding::Embedding { table, t }, &[ids], &[hs]);
    } else if !stack.h_external {
        return bad("a stack without the embedding reads the external h".into());
    }
    let lens = (stack.kv == Kv::Batch).then(|| g.external("lens", f32s(b)));
    // pos[0]: tokens already in the cache before this pass (0 for a fresh batch), read on the GPU.
    let pos = g.external("pos", 4);
    let inv_freq = WeightRef::global("inv_freq");
    let seq = if stack.kv == Kv::Batch { s } else { 0 };
    for l in stack.layers.clone() {
        let p = |name: &str| format!("layers.{l}.{name}");
        let x = g.tensor(&p("x"), f32s(t * c));
        let norm = ops::norm::RmsNorm { weight: w(l, "input_layernorm"), t, c, eps };
        g.node(p("input_layernorm"), norm, &[hs], &[x]);
        let mut qkv = Vec::new();
        for (name, bias, heads) in [("q_proj", "q_bias", h), ("k_proj", "k_bias", hkv), ("v_proj", "v_bias", hkv)] {
            let y = g.tensor(&p(&name[..1]), f32s(t * heads * d));
            let bias = Some(w(l, bias)).filter(|_| stack.qkv_bias);
            let op = ops::matmul::Linear { weight: w(l, name), bias, t, accumulate: false };
            g.node(p(name), op, &[x], &[y]);
            qkv.push(y);
        }
        let (q, k, v) = (qkv[0], qkv[1], qkv[2]);
        let (q_rot, k_rot) = (g.in_place(q, &p("q_rot")), g.in_place(k, &p("k_rot")));
        g.node(p("rope_q"), ops::rope::Rope { inv_freq, t, heads: h, d, seq }, &[q], &[q_rot]);
        g.node(p("rope_k"), ops::rope::Rope { inv_freq, t, heads: hkv, d, seq }, &[k], &[k_rot]);
        let attn = if let Kv::Cache { spec, .. } = stack.kv {
            super::kv::attention(g, l, &spec, t, h, stack.decode, (q_rot, k_rot, v), pos)?
        } else {
            batch_attention(g, l, stack, (t, h, hkv, d), (q_rot, k_rot, v), pos, lens)
        };
        let h1 = g.in_place(hs, &p("h_attn"));
        let o_proj = ops::matmul::Linear { weight: w(l, "o_proj"), bias: None, t, accumulate: true };
        g.node(p("o_proj"), o_proj, &[attn, hs], &[h1]);
        let x2 = g.tensor(&p("x_mlp"), f32s(t * c));
        let norm = ops::norm::RmsNorm { weight: w(l, "post_attention_layernorm"), t, c, eps };
        g.node(p("post_attention_layernorm"), norm, &[h1], &[x2]);
        let gu = g.tensor(&p("gate_up"), f32s(t * 2 * i));
        let gate_up = ops::matmul::Linear { weight: w(l, "gate_up"), bias: None, t, accumulate: false };
        g.node(p("gate_up"), gate_up, &[x2], &[gu]);
        let act = g.tensor(&p("act"), f32s(t * i));
        g.node(p("silu_mul"), ops::elementwise::SiluMul { t, i }, &[gu], &[act]);
        hs = g.in_place(h1, &p("h_out"));
        let down = ops::matmul::Linear { weight: w(l, "down_proj"), bias: None, t, accumulate: true };
        g.node(p("down_proj"), down, &[act, h1], &[hs]);
    }
    Ok(hs)
}

/// Attention of a right-padded batch (`Kv::Batch`) over pooled f16 K/V written in this pass.
fn batch_attention(
    g: &mut Graph,
    l: usize,
    stack: &Stack,
    (t, h, hkv, d): (usize, usize, usize, usize),
    (q_rot, k_rot, v): (TensorId, TensorId, TensorId),
    pos: TensorId,
    lens: Option<TensorId>,
) -> TensorId {
    let (b, s) = (stack.b, stack.s);
    let f32s = |n: usize| (n * 4) as u64;
    let p = |name: &str| format!("layers.{l}.{name}");
    let kv_rows = t;
    let cache = (kv_rows * ops::attention::cache_row_bytes(hkv, d)) as u64;
    // A fresh cache has no earlier contents to keep: written from scratch every pass.
    let (ck, cv) = (g.tensor(&p("k_cache"), cache), g.tensor(&p("v_cache"), cache));
    let write = ops::attention::KvWrite { t, hkv, d, ctx_len: kv_rows };
    g.node(p("kv_write"), write, &[k_rot, v], &[ck, cv]);
    let attn = g.tensor(&p("attn"), f32s(t * h * d));
    let shape = AttnShape { b, s, h, hkv, d, kv_stride: s, q_stride: h * d, causal: true };
    let op = ops::attention::Prefill { shape, lens: lens.is_some(), kv_f32: false };
    let mut inputs = vec![q_rot, ck, cv, pos];
    inputs.extend(lens);
    g.node(p("attention"), op, &inputs, &[attn]);
    attn
}
