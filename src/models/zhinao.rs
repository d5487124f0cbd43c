//! 360Zhinao causal LM (`ZhinaoForCausalLM`): a LLaMA-style pre-norm decoder whose attention
//! projection is one fused `qkv_proj` (with bias) interleaved per KV head (spec §2.3); NeoX RoPE
//! with f32 inverse frequencies; SwiGLU MLP; untied lm_head. Dense (bf16/f16/f32) and GPTQ-Int4
//! checkpoints. Reference: `tools/fixtures/zhinao_ref.py` (a PyTorch stand-in for the unpublished
//! `modeling_zhinao.py`, cross-checked against transformers' Qwen2).
//!
//! At load, the fused qkv is split into Q, K and V weights (so attention reads contiguous tensors)
//! and gate/up are concatenated into one `[2I, C]` weight (one GEMV for both).
//!
//! The forward pass is described once, as a graph ([`build`]), which `generate::Session` plans and
//! records; the model resolves the graph's weight names (`impl Weights for Zhinao`).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::graph::{Graph, Op, WeightRef, Weights};
use crate::loader::config::{QuantizeConfig, ZhinaoConfig};
use crate::loader::qkv::{self, QkvHeads};
use crate::loader::{TensorView, VarBuilder, WeightFiles};
use crate::ops;
use crate::tensor::{DType, QWeight, Weight};

/// A Linear layer's weight on the GPU: dense or GPTQ int4.
pub enum Linear {
    Dense(Weight),
    Q4(QWeight),
}

impl Linear {
    /// y[T, N] (+)= x[T, K] · Wᵀ (+ bias).
    pub fn record(
        &self,
        ctx: &Context,
        x: &GpuBuffer,
        t: usize,
        bias: Option<&GpuBuffer>,
        y: &GpuBuffer,
        acc: bool,
    ) -> Result<Vec<Dispatch>> {
        match self {
            Linear::Dense(w) => ops::matmul::matmul(ctx, x, t, w, bias, y, acc),
            Linear::Q4(w) => ops::matmul_q4::matmul_q4(ctx, x, t, w, bias, y, acc),
        }
    }
    pub fn bytes(&self) -> u64 {
        match self {
            Linear::Dense(w) => w.bytes(),
            Linear::Q4(w) => w.bytes(),
        }
    }
}

/// One decoder layer. Norm weights and biases are f32.
pub struct Layer {
    pub input_layernorm: GpuBuffer,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub q_bias: GpuBuffer,
    pub k_bias: GpuBuffer,
    pub v_bias: GpuBuffer,
    pub o_proj: Linear,
    pub post_attention_layernorm: GpuBuffer,
    /// gate_proj and up_proj stacked: [2I, C].
    pub gate_up: Linear,
    pub down_proj: Linear,
}

pub struct Zhinao {
    pub cfg: ZhinaoConfig,
    pub ctx: Arc<Context>,
    pub embed_tokens: Weight,
    pub layers: Vec<Layer>,
    pub norm: GpuBuffer,
    /// The vocabulary projection; `None` for a backbone loaded without it (the reranker).
    pub lm_head: Option<Weight>,
    /// RoPE inverse frequencies θ^(−2i/D), i < D/2, computed in f32.
    pub inv_freq: GpuBuffer,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
}

/// Loading progress: (bytes uploaded, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

struct Loader<'a> {
    ctx: &'a Context,
    quant: Option<QuantizeConfig>,
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl Loader<'_> {
    fn tick(&mut self, bytes: usize) {
        self.done += bytes as u64;
        (self.progress)(self.done, self.total);
    }

    fn f32_vec(&mut self, vb: &VarBuilder, shape: &[usize], name: &str) -> Result<GpuBuffer> {
        let t = vb.get(shape, name)?;
        self.tick(t.data.len());
        self.ctx.upload_f32(&vb.path(name), &t.to_f32_vec()?)
    }

    fn dense(&mut self, t: &TensorView, rows: usize, cols: usize, data: &[u8]) -> Result<Weight> {
        self.tick(data.len());
        Weight::upload(self.ctx, t.name, t.dtype, rows, cols, data)
    }

    /// The Q, K and V weights and biases of a fused, interleaved qkv_proj.
    #[allow(clippy::type_complexity)]
    fn qkv(&mut self, vb: &VarBuilder, cfg: &ZhinaoConfig) -> Result<([Linear; 3], [GpuBuffer; 3])> {
        let (c, d, h, hkv) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads());
        let heads = QkvHeads::new(h, hkv, d)?;
        let n = (h + 2 * hkv) * d;
        let sizes = [h * d, hkv * d, hkv * d];
        let bias = vb.get(&[n], "bias")?;
        let bias = qkv::deinterleave_bias(bias.data, bias.dtype.size(), &heads)?;
        let bias = crate::tensor::to_f32(vb.get_any_shape("bias")?.dtype, &bias);
        let mut biases = Vec::new();
        let mut off = 0;
        for s in sizes {
            biases.push(self.ctx.upload_f32("qkv bias", &bias[off..off + s])?);
            off += s;
        }
        let linears = match &self.quant {
            None => {
                let w = vb.get(&[n, c], "weight")?;
                let row_bytes = c * w.dtype.size();
                let data = qkv::deinterleave_rows(w.data, row_bytes, &heads)?;
                let mut parts = Vec::new();
                let mut r0 = 0;
                for s in sizes {
                    parts.push(Linear::Dense(self.dense(&w, s, c, &data[r0 * row_bytes..(r0 + s) * row_bytes])?));
                    r0 += s;
                }
                parts
            }
            Some(q) => {
                let g = q.group_size as usize;
                let qw = vb.get_with_dtype(&[c / 8, n], DType::I32, "qweight")?;
                let qz = vb.get_with_dtype(&[c / g, n / 8], DType::I32, "qzeros")?;
                let sc = vb.get_with_dtype(&[c / g, n], DType::F16, "scales")?;
                let gi = vb.get_opt(&[c], "g_idx")?;
                let qw_d = qkv::deinterleave_gptq_qweight(qw.data, &heads)?;
                let qz_d = qkv::deinterleave_gptq_qzeros(qz.data, &heads)?;
                let sc_d = qkv::deinterleave_gptq_scales(sc.data, &heads)?;
                self.tick(qw.data.len() + qz.data.len() + sc.data.len());
                let mut parts = Vec::new();
                let mut c0 = 0;
                for s in sizes {
                    let qw_p = slice_cols(&qw_d, n * 4, c0 * 4, s * 4);
                    let qz_p = slice_cols(&qz_d, n / 8 * 4, c0 / 8 * 4, s / 8 * 4);
                    let sc_p = slice_cols(&sc_d, n * 2, c0 * 2, s * 2);
                    let gi = gi.as_ref().map(|t| t.data);
                    parts.push(Linear::Q4(QWeight::upload(self.ctx, qw.name, c, s, g, &qw_p, &qz_p, &sc_p, gi)?));
                    c0 += s;
                }
                parts
            }
        };
        let [q, k, v]: [Linear; 3] = linears.try_into().map_err(|_| Error::Config("qkv split".into()))?;
        let [bq, bk, bv]: [GpuBuffer; 3] = biases.try_into().map_err(|_| Error::Config("qkv bias split".into()))?;
        Ok(([q, k, v], [bq, bk, bv]))
    }

    /// A Linear `[out, in]`; several `names` under `vb` are stacked along `out` (gate|up).
    fn linear(&mut self, vb: &VarBuilder, names: &[&str], out: usize, inp: usize) -> Result<Linear> {
        match &self.quant {
            None => {
                let mut data = Vec::new();
                let mut first = None;
                for name in names {
                    let w = vb.pp(name).get(&[out, inp], "weight")?;
                    if first.is_some_and(|d| d != w.dtype) {
                        return Err(Error::Config(format!("{}: dtype differs from its sibling", w.name)));
                    }
                    first = Some(w.dtype);
                    data.extend_from_slice(w.data);
                }
                let w = vb.pp(names[0]).get(&[out, inp], "weight")?;
                Ok(Linear::Dense(self.dense(&w, out * names.len(), inp, &data)?))
            }
            Some(q) => {
                let g = q.group_size as usize;
                let mut parts = Vec::new();
                for name in names {
                    let v = vb.pp(name);
                    let qw = v.get_with_dtype(&[inp / 8, out], DType::I32, "qweight")?;
                    let qz = v.get_with_dtype(&[inp / g, out / 8], DType::I32, "qzeros")?;
                    let sc = v.get_with_dtype(&[inp / g, out], DType::F16, "scales")?;
                    let gi = v.get_opt(&[inp], "g_idx")?.map(|t| t.data);
                    self.tick(qw.data.len() + qz.data.len() + sc.data.len());
                    parts.push(QWeight::upload(self.ctx, qw.name, inp, out, g, qw.data, qz.data, sc.data, gi)?);
                }
                Ok(Linear::Q4(QWeight::stack(parts)?))
            }
        }
    }
}

/// Columns `[start, start + len)` (in bytes) of a row-major matrix with rows of `row` bytes.
fn slice_cols(data: &[u8], row: usize, start: usize, len: usize) -> Vec<u8> {
    data.chunks_exact(row).flat_map(|r| &r[start..start + len]).copied().collect()
}

impl Zhinao {
    /// Load a published model directory (bf16/f16/f32 safetensors, sharded or not, or a GPTQ
    /// directory), streaming each tensor from the memory map to the GPU.
    pub fn load(ctx: Arc<Context>, dir: &Path, progress: Progress) -> Result<Zhinao> {
        let cfg = ZhinaoConfig::load(dir)?;
        cfg.validate()?;
        let quant = cfg.quantization_config.clone();
        let files = match &quant {
            Some(q) => {
                q.validate()?;
                match q.model_file_name().map(|f| dir.join(f)).filter(|p| p.exists()) {
                    Some(named) => WeightFiles::open_file(&named)?,
                    None => WeightFiles::open(dir)?,
                }
            }
            None => WeightFiles::open(dir)?,
        };
        Zhinao::from_files(ctx, cfg, quant, &files, progress)
    }

    /// The causal LM from already opened weight files.
    pub fn from_files(
        ctx: Arc<Context>,
        cfg: ZhinaoConfig,
        quant: Option<QuantizeConfig>,
        files: &WeightFiles,
        progress: Progress,
    ) -> Result<Zhinao> {
        Zhinao::build(ctx, cfg, quant, files, true, progress)
    }

    /// The decoder stack and final norm only: `lm_head.weight` is neither read nor uploaded
    /// (heads other than the vocabulary projection, e.g. the reranker's `linear`).
    pub fn backbone_from_files(
        ctx: Arc<Context>,
        cfg: ZhinaoConfig,
        quant: Option<QuantizeConfig>,
        files: &WeightFiles,
        progress: Progress,
    ) -> Result<Zhinao> {
        Zhinao::build(ctx, cfg, quant, files, false, progress)
    }

    fn build(
        ctx: Arc<Context>,
        cfg: ZhinaoConfig,
        quant: Option<QuantizeConfig>,
        files: &WeightFiles,
        lm_head: bool,
        progress: Progress,
    ) -> Result<Zhinao> {
        let (c, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let vb = VarBuilder::new(files);
        let mut total = files.total_bytes() as u64;
        if !lm_head {
            total -= files.get("lm_head.weight").map(|t| t.data.len() as u64).unwrap_or(0);
        }
        let mut ld = Loader { ctx: &ctx, quant, done: 0, total, progress };
        let m = vb.pp("model");
        let emb = m.pp("embed_tokens").get(&[v, c], "weight")?;
        let embed_tokens = ld.dense(&emb, v, c, emb.data)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lv = m.pp("layers").pp(l);
            let attn = lv.pp("self_attn");
            let ([q_proj, k_proj, v_proj], [q_bias, k_bias, v_bias]) = ld.qkv(&attn.pp("qkv_proj"), &cfg)?;
            let nh = cfg.num_attention_heads * cfg.head_dim();
            layers.push(Layer {
                input_layernorm: ld.f32_vec(&lv.pp("input_layernorm"), &[c], "weight")?,
                q_proj,
                k_proj,
                v_proj,
                q_bias,
                k_bias,
                v_bias,
                o_proj: ld.linear(&attn, &["o_proj"], c, nh)?,
                post_attention_layernorm: ld.f32_vec(&lv.pp("post_attention_layernorm"), &[c], "weight")?,
                gate_up: ld.linear(&lv.pp("mlp"), &["gate_proj", "up_proj"], i, c)?,
                down_proj: ld.linear(&lv.pp("mlp"), &["down_proj"], c, i)?,
            });
        }
        let norm = ld.f32_vec(&m.pp("norm"), &[c], "weight")?;
        let lm_head = match lm_head {
            true => {
                let head = vb.pp("lm_head").get(&[v, c], "weight")?;
                Some(ld.dense(&head, v, c, head.data)?)
            }
            false => None,
        };
        let inv_freq = ctx.upload_f32("inv_freq", &ops::rope::inv_freq(cfg.rope_theta as f32, cfg.head_dim()))?;
        ctx.sync()?;
        // Unused tensors (e.g. rotary_emb.inv_freq) count in the total: finish the bar at 100%.
        (ld.progress)(ld.total, ld.total);
        let weight_bytes = embed_tokens.bytes()
            + lm_head.as_ref().map_or(0, |w| w.bytes())
            + layers
                .iter()
                .map(|l| {
                    [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_up, &l.down_proj]
                        .iter()
                        .map(|w| w.bytes())
                        .sum::<u64>()
                })
                .sum::<u64>();
        Ok(Zhinao { cfg, ctx, embed_tokens, layers, norm, lm_head, inv_freq, weight_bytes })
    }

    /// KV-cache bytes for `ctx_len` positions (K and V, f16, all layers).
    pub fn kv_bytes(&self, ctx_len: usize) -> u64 {
        (2 * self.cfg.num_hidden_layers
            * ctx_len
            * ops::attention::cache_row_bytes(self.cfg.num_kv_heads(), self.cfg.head_dim())) as u64
    }
}

// ---- the forward pass as a graph ----------------------------------------------------------------

/// Which forward [`build`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A prefill chunk of T tokens at pos0 (rewritten on replay) and which logits it produces.
    Prefill(Logits),
    /// One token whose id is already on the device; logits row 0 and its GPU argmax.
    Decode,
    /// Only the embedding, into the external `h` (layer-by-layer debugging).
    Embed,
    /// Only layer l, updating the external `h` in place.
    Layer(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Logits {
    None,
    /// The last row's [V] into `logits.0`.
    Last,
    /// Every row, `logit_rows` rows per external buffer `logits.{k}`.
    All,
}

fn w(layer: usize, name: &'static str) -> WeightRef {
    WeightRef { layer: Some(layer), name }
}
fn global(name: &'static str) -> WeightRef {
    WeightRef { layer: None, name }
}

/// The Zhinao forward for `t` tokens, described once as a graph. Shape-only (no weights): the
/// config, the KV-cache length, and `logit_rows` (rows per logits buffer, bounded by the
/// adapter's binding limit). External tensors: `ids` [T] u32, `k_cache.{l}` / `v_cache.{l}`,
/// `logits.{k}`, `argmax.id` / `argmax.val`, and `h` [T, C] in the debugging modes.
pub fn build(cfg: &ZhinaoConfig, ctx_len: usize, logit_rows: usize, t: usize, mode: Mode) -> Result<Graph> {
    let (c, d, h, hkv, i, v) = (
        cfg.hidden_size,
        cfg.head_dim(),
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    if t == 0 || t > ctx_len || (mode == Mode::Decode && t != 1) {
        return Err(Error::Input(format!("{t} tokens for {mode:?} with a context of {ctx_len}")));
    }
    let eps = cfg.rms_norm_eps as f32;
    let f32s = |n: usize| (n * 4) as u64;
    let mut g = Graph::default();
    let debug = matches!(mode, Mode::Embed | Mode::Layer(_));
    let mut hs = if debug { g.external("h", f32s(t * c)) } else { g.tensor("h", f32s(t * c)) };
    if !matches!(mode, Mode::Layer(_)) {
        let ids = g.external("ids", f32s(t));
        g.node("embed_tokens", Op::Embedding { table: global("embed_tokens"), t }, &[ids], &[hs]);
    }
    let layers = match mode {
        Mode::Embed => 0..0,
        Mode::Layer(l) if l < cfg.num_hidden_layers => l..l + 1,
        Mode::Layer(l) => return Err(Error::Input(format!("layer {l} of {}", cfg.num_hidden_layers))),
        _ => 0..cfg.num_hidden_layers,
    };
    let cache = (ctx_len * ops::attention::cache_row_bytes(hkv, d)) as u64;
    let decode = mode == Mode::Decode;
    for l in layers {
        let p = |s: &str| format!("layers.{l}.{s}");
        let x = g.tensor(&p("x"), f32s(t * c));
        g.node(p("input_layernorm"), Op::RmsNorm { weight: w(l, "input_layernorm"), t, c, eps }, &[hs], &[x]);
        let mut qkv = Vec::new();
        for (name, bias, n) in [("q_proj", "q_bias", h), ("k_proj", "k_bias", hkv), ("v_proj", "v_bias", hkv)] {
            let y = g.tensor(&p(&name[..1]), f32s(t * n * d));
            g.node(
                p(name),
                Op::Linear { weight: w(l, name), bias: Some(w(l, bias)), t, accumulate: false },
                &[x],
                &[y],
            );
            qkv.push(y);
        }
        let (q, k, vv) = (qkv[0], qkv[1], qkv[2]);
        let q_rot = g.in_place(q, &p("q_rot"));
        let k_rot = g.in_place(k, &p("k_rot"));
        g.node(p("rope_q"), Op::Rope { inv_freq: global("inv_freq"), t, heads: h, d }, &[q], &[q_rot]);
        g.node(p("rope_k"), Op::Rope { inv_freq: global("inv_freq"), t, heads: hkv, d }, &[k], &[k_rot]);
        let (ck, cv) = (g.external(&format!("k_cache.{l}"), cache), g.external(&format!("v_cache.{l}"), cache));
        let (ck2, cv2) = (g.in_place(ck, &p("k_cache'")), g.in_place(cv, &p("v_cache'")));
        g.node(p("kv_write"), Op::KvWrite { t, hkv, d, ctx_len }, &[k_rot, vv, ck, cv], &[ck2, cv2]);
        let attn = g.tensor(&p("attn"), f32s(t * h * d));
        let mut outs = vec![attn];
        if decode {
            outs.push(g.tensor(&p("attn_scratch"), f32s(ops::attention::decode_scratch_len(h, hkv, d, ctx_len))));
        }
        g.node(p("attention"), Op::Attention { t, h, hkv, d, ctx_len, decode }, &[q_rot, ck2, cv2], &outs);
        let h1 = g.in_place(hs, &p("h_attn"));
        g.node(p("o_proj"), Op::Linear { weight: w(l, "o_proj"), bias: None, t, accumulate: true }, &[attn, hs], &[h1]);
        let x2 = g.tensor(&p("x_mlp"), f32s(t * c));
        g.node(
            p("post_attention_layernorm"),
            Op::RmsNorm { weight: w(l, "post_attention_layernorm"), t, c, eps },
            &[h1],
            &[x2],
        );
        let gu = g.tensor(&p("gate_up"), f32s(t * 2 * i));
        g.node(p("gate_up"), Op::Linear { weight: w(l, "gate_up"), bias: None, t, accumulate: false }, &[x2], &[gu]);
        let act = g.tensor(&p("act"), f32s(t * i));
        g.node(p("silu_mul"), Op::SiluMul { t, i }, &[gu], &[act]);
        hs = g.in_place(h1, &p("h_out"));
        g.node(
            p("down_proj"),
            Op::Linear { weight: w(l, "down_proj"), bias: None, t, accumulate: true },
            &[act, h1],
            &[hs],
        );
    }
    let rows: Vec<(usize, usize)> = match mode {
        Mode::Prefill(Logits::All) => {
            (0..t).step_by(logit_rows.max(1)).map(|r| (r, logit_rows.max(1).min(t - r))).collect()
        }
        Mode::Prefill(Logits::Last) | Mode::Decode => vec![(t - 1, 1)],
        _ => vec![],
    };
    if !rows.is_empty() {
        let x = g.tensor("x_final", f32s(t * c));
        g.node("norm", Op::RmsNorm { weight: global("norm"), t, c, eps }, &[hs], &[x]);
        for (k, &(row0, n)) in rows.iter().enumerate() {
            let logits = g.external(&format!("logits.{k}"), f32s(n * v));
            g.node(format!("lm_head.{k}"), Op::LmHead { weight: global("lm_head"), row0, rows: n }, &[x], &[logits]);
            if decode {
                let (id, val) = (g.external("argmax.id", 4), g.external("argmax.val", 4));
                g.node("argmax", Op::Argmax { rows: 1, n: v }, &[logits], &[id, val]);
            }
        }
    }
    Ok(g)
}

impl Weights for Zhinao {
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
            (None, "lm_head") => {
                self.lm_head.as_ref().ok_or_else(|| Error::Unsupported("model loaded without its lm_head".into()))
            }
            _ => Err(unknown(r)),
        }
    }
    fn vector(&self, r: &WeightRef) -> Result<&GpuBuffer> {
        if r.layer.is_none() {
            return match r.name {
                "norm" => Ok(&self.norm),
                "inv_freq" => Ok(&self.inv_freq),
                _ => Err(unknown(r)),
            };
        }
        let l = self.layer(r)?;
        Ok(match r.name {
            "input_layernorm" => &l.input_layernorm,
            "post_attention_layernorm" => &l.post_attention_layernorm,
            "q_bias" => &l.q_bias,
            "k_bias" => &l.k_bias,
            "v_bias" => &l.v_bias,
            _ => return Err(unknown(r)),
        })
    }
}

impl Zhinao {
    fn layer(&self, r: &WeightRef) -> Result<&Layer> {
        r.layer.and_then(|l| self.layers.get(l)).ok_or_else(|| unknown(r))
    }
}

fn unknown(r: &WeightRef) -> Error {
    Error::MissingTensor { name: format!("{r:?}"), looked_in: "the loaded Zhinao model".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Plan;

    /// The published 360Zhinao-7B shape (no weights needed: planning is shape-only).
    const SEVEN_B: &str = r#"{"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 158208,
        "max_position_embeddings": 4096}"#;

    fn tiny() -> ZhinaoConfig {
        ZhinaoConfig::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao")).unwrap()
    }

    #[test]
    fn the_zhinao_graph_plans_fewer_buffers_than_tensors() {
        let seven = ZhinaoConfig::from_json(SEVEN_B).unwrap();
        for (name, cfg, ctx_len) in [("tiny", tiny(), 128), ("7B", seven, 4096)] {
            for (t, mode) in [(64, Mode::Prefill(Logits::Last)), (64, Mode::Prefill(Logits::All)), (1, Mode::Decode)] {
                let g = build(&cfg, ctx_len, 64, t, mode).unwrap();
                let s = Plan::new(&g).unwrap().stats(&g);
                eprintln!("{name} T={t} {mode:?}: {} nodes, {s:?}", g.nodes.len());
                assert!(s.buffers < s.storages && s.storages < s.tensors, "{name} {mode:?}: {s:?}");
                assert!(s.planned_bytes < s.naive_bytes, "{name} {mode:?}: {s:?}");
            }
        }
        // Decode steps T = 1 only; layers must exist.
        assert!(build(&tiny(), 128, 1, 2, Mode::Decode).is_err());
        assert!(build(&tiny(), 128, 1, 1, Mode::Layer(99)).is_err());
    }
}
