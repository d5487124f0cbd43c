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
use crate::ops::{self, attention::AttnShape, attention_paged};
use crate::tensor::{Linear, Weight};

/// One decoder layer (`model.layers.{l}`). Norm weights and biases are f32.
pub struct Layer {
    pub input_layernorm: GpuBuffer,
    /// q_proj, k_proj and v_proj as one `[(H + 2·Hkv)·D, C]` weight, rows Q | K | V (the checkpoint's
    /// per-KV-head interleave undone), and its bias in the same order.
    pub qkv: Linear,
    pub qkv_bias: Option<GpuBuffer>,
    pub o_proj: Linear,
    pub post_attention_layernorm: GpuBuffer,
    /// gate_proj and up_proj as one `[2I, C]` weight: rows interleaved (2i = gate_i, 2i + 1 = up_i)
    /// when `gate_up_interleaved`, else stacked gate | up (GPTQ halves with different act-order maps).
    pub gate_up: Linear,
    pub gate_up_interleaved: bool,
    pub down_proj: Linear,
}

impl Layer {
    fn load(up: &mut Uploader, vb: &VarBuilder, cfg: &ZhinaoConfig) -> Result<Layer> {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        let heads = QkvHeads::new(cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim())?;
        let attn = vb.pp("self_attn");
        let (qkv, qkv_bias) = up.qkv(&attn.pp("qkv_proj"), &heads, c)?;
        let nh = cfg.num_attention_heads * cfg.head_dim();
        let (gate_up, gate_up_interleaved) = up.gate_up(&vb.pp("mlp"), i, c)?;
        Ok(Layer {
            input_layernorm: up.vector(&vb.pp("input_layernorm"), c, "weight")?,
            qkv,
            qkv_bias,
            o_proj: up.linear(&attn, &["o_proj"], c, nh)?,
            post_attention_layernorm: up.vector(&vb.pp("post_attention_layernorm"), c, "weight")?,
            gate_up,
            gate_up_interleaved,
            down_proj: up.linear(&vb.pp("mlp"), &["down_proj"], c, i)?,
        })
    }

    fn linears(&self) -> [&Linear; 4] {
        [&self.qkv, &self.o_proj, &self.gate_up, &self.down_proj]
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

    /// How the loaded layers are laid out (the graph's view of them).
    pub fn layout(&self) -> Layout {
        let first = self.layers.first();
        Layout {
            qkv_bias: first.is_none_or(|l| l.qkv_bias.is_some()),
            gate_up_interleaved: first.is_none_or(|l| l.gate_up_interleaved),
        }
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
            "qkv" => &l.qkv,
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
        match r.name {
            "input_layernorm" => Ok(&l.input_layernorm),
            "post_attention_layernorm" => Ok(&l.post_attention_layernorm),
            "qkv_bias" => l.qkv_bias.as_ref().ok_or_else(|| unknown(r)),
            _ => Err(unknown(r)),
        }
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
    /// B sequences of one new token each (S = 1, decode), sequence b continuing slot b of a pooled
    /// f16 cache `k_slots.{l}` / `v_slots.{l}` of `slot_rows` positions per slot; its position is the
    /// external `pos[b]` (`engine::batch`).
    Slots { slot_rows: usize },
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
    /// How the loaded weights are laid out.
    pub layout: Layout,
}

/// What a graph must know of the loaded weights (shape-only planning uses the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// qkv_proj has a bias (360Zhinao's does).
    pub qkv_bias: bool,
    /// gate/up rows are interleaved (see [`Layer`]).
    pub gate_up_interleaved: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { qkv_bias: true, gate_up_interleaved: true }
    }
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
            layout: Layout::default(),
        }
    }
}

fn w(layer: usize, name: &'static str) -> WeightRef {
    WeightRef::layer(layer, name)
}

/// Add the decoder (as `stack` says) to `g`; returns the residual stream `h` [T, C] after the last
/// layer. External tensors: `pos` [1] u32 (pos[0] = tokens already in the cache; [B] for
/// Kv::Slots), `ids` [T] u32 (with `embed`), `h` [T, C] (with `h_external`), `k_cache.{l}.{a}` /
/// `v_cache.{l}.{a}` (Kv::Cache), `k_slots.{l}` / `v_slots.{l}` (Kv::Slots) or `lens` [B] u32
/// (Kv::Batch).
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
        Kv::Slots { slot_rows } if s != 1 || !stack.decode || slot_rows == 0 => {
            return bad(format!("slots take one decode token per sequence, not {b}×{s}"));
        }
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
    // pos[0]: tokens already in the cache before this pass (0 for a fresh batch), read on the GPU;
    // pos[b] for each of a batch's slots.
    let slots = matches!(stack.kv, Kv::Slots { .. });
    let pos = g.external("pos", if slots { f32s(b) } else { 4 });
    let inv_freq = WeightRef::global("inv_freq");
    let qkv_n = (h + 2 * hkv) * d;
    // Rows of the one f16 cache buffer per layer, where the graph uses one (see below).
    let (kv_rows, session) = match stack.kv {
        Kv::Cache { spec, .. } => (spec.layout.arena_rows(0), true),
        Kv::Slots { slot_rows } => (slot_rows, true),
        Kv::Batch => (t, false),
    };
    // A decode step (T = 1, or a batch of up to gemv::MAX_T sequences) fuses: RMSNorm into the GEMV
    // that follows it, the qkv bias, the residual adds, SiLU·mul into gate/up; RoPE with the KV
    // write. 7 dispatches per layer. Larger batches run the weight matmuls as GEMMs.
    let fused = stack.decode && t <= ops::gemv::MAX_T;
    let linear = |weight, bias, acc| ops::matmul::Linear { weight, bias, t, accumulate: acc };
    let gemv = |weight, bias, norm, silu, acc| ops::gemv::Gemv {
        weight: ops::gemv::GemvSource::Linear(weight),
        bias,
        norm,
        silu,
        acc,
        t,
    };
    for l in stack.layers.clone() {
        let p = |name: &str| format!("layers.{l}.{name}");
        let qkv_bias = Some(w(l, "qkv_bias")).filter(|_| stack.layout.qkv_bias);
        let qkv = g.tensor(&p("qkv"), f32s(t * qkv_n));
        if fused {
            let op = gemv(w(l, "qkv"), qkv_bias, Some((w(l, "input_layernorm"), eps)), false, false);
            g.node(p("qkv_proj"), op, &[hs], &[qkv]);
        } else {
            let x = g.tensor(&p("x"), f32s(t * c));
            let norm = ops::norm::RmsNorm { weight: w(l, "input_layernorm"), t, c, eps };
            g.node(p("input_layernorm"), norm, &[hs], &[x]);
            g.node(p("qkv_proj"), linear(w(l, "qkv"), qkv_bias, false), &[x], &[qkv]);
        }
        let qkv_rot = g.in_place(qkv, &p("qkv_rot"));
        let attn = match stack.kv {
            Kv::Cache { spec, .. } if !attention_paged::single_f16(&spec.layout, spec.arenas) => {
                // A quantized or multi-arena cache: RoPE on Q and K in place, append K and V (in the
                // cache's format), attention over the arenas.
                let rope = ops::rope::RopeQkv { inv_freq, t, h, hkv, d };
                g.node(p("rope_qkv"), rope, &[qkv], &[qkv_rot]);
                super::kv::attention(g, l, &spec, t, h, qkv_n, stack.decode, qkv_rot, pos)?
            }
            _ => {
                // One f16 buffer per layer (a session's single arena, or a batch's pooled cache):
                // RoPE on Q (in place) and K, K and V into the cache rows pos[0] + t, one dispatch.
                let slot_count = if slots { b } else { 1 };
                let cache = (slot_count * kv_rows * ops::attention::cache_row_bytes(hkv, d)) as u64;
                let seq = if session { 0 } else { s };
                let write = ops::rope::RopeKvWrite { inv_freq, t, h, hkv, d, seq, ctx_len: kv_rows, slots };
                let (ck, cv) = if session {
                    let (kn, vn) = if slots {
                        (format!("k_slots.{l}"), format!("v_slots.{l}"))
                    } else {
                        super::kv::arena_names(l, 0)
                    };
                    let (ck, cv) = (g.external(&kn, cache), g.external(&vn, cache));
                    let (ck2, cv2) = (g.in_place(ck, &p("k_cache'")), g.in_place(cv, &p("v_cache'")));
                    g.node(p("rope_kv_write"), write, &[qkv, pos, ck, cv], &[qkv_rot, ck2, cv2]);
                    (ck2, cv2)
                } else {
                    // A fresh cache has no earlier contents to keep: written from scratch every pass.
                    let (ck, cv) = (g.tensor(&p("k_cache"), cache), g.tensor(&p("v_cache"), cache));
                    g.node(p("rope_kv_write"), write, &[qkv, pos], &[qkv_rot, ck, cv]);
                    (ck, cv)
                };
                let attn = g.tensor(&p("attn"), f32s(t * h * d));
                if stack.decode {
                    let scratch_len = b * ops::attention::decode_scratch_len(h, hkv, d, kv_rows);
                    let scratch = g.tensor(&p("attn_scratch"), f32s(scratch_len));
                    let rows = ops::attention::DecodeRows { b, q_stride: qkv_n };
                    let op = ops::attention::Decode { h, hkv, d, ctx_len: kv_rows, rows };
                    g.node(p("attention"), op, &[qkv_rot, ck, cv, pos], &[attn, scratch]);
                } else {
                    let kv_stride = if session { kv_rows } else { s };
                    let shape = AttnShape { b, s, h, hkv, d, kv_stride, q_stride: qkv_n, causal: true };
                    let op = ops::attention::Prefill { shape, lens: lens.is_some(), kv_f32: false };
                    let mut inputs = vec![qkv_rot, ck, cv, pos];
                    inputs.extend(lens);
                    g.node(p("attention"), op, &inputs, &[attn]);
                }
                attn
            }
        };
        let h1 = g.in_place(hs, &p("h_attn"));
        let o_proj = w(l, "o_proj");
        if fused {
            g.node(p("o_proj"), gemv(o_proj, None, None, false, true), &[attn, hs], &[h1]);
        } else {
            g.node(p("o_proj"), linear(o_proj, None, true), &[attn, hs], &[h1]);
        }
        let act = g.tensor(&p("act"), f32s(t * i));
        let post_norm = w(l, "post_attention_layernorm");
        if fused && stack.layout.gate_up_interleaved {
            let op = gemv(w(l, "gate_up"), None, Some((post_norm, eps)), true, false);
            g.node(p("gate_up"), op, &[h1], &[act]);
        } else {
            let gu = g.tensor(&p("gate_up"), f32s(t * 2 * i));
            if fused {
                g.node(p("gate_up"), gemv(w(l, "gate_up"), None, Some((post_norm, eps)), false, false), &[h1], &[gu]);
            } else {
                let x2 = g.tensor(&p("x_mlp"), f32s(t * c));
                g.node(
                    p("post_attention_layernorm"),
                    ops::norm::RmsNorm { weight: post_norm, t, c, eps },
                    &[h1],
                    &[x2],
                );
                g.node(p("gate_up"), linear(w(l, "gate_up"), None, false), &[x2], &[gu]);
            }
            let silu = ops::elementwise::SiluMul { t, i, interleaved: stack.layout.gate_up_interleaved };
            g.node(p("silu_mul"), silu, &[gu], &[act]);
        }
        hs = g.in_place(h1, &p("h_out"));
        let down = w(l, "down_proj");
        if fused {
            g.node(p("down_proj"), gemv(down, None, None, false, true), &[act, h1], &[hs]);
        } else {
            g.node(p("down_proj"), linear(down, None, true), &[act, h1], &[hs]);
        }
    }
    Ok(hs)
}
