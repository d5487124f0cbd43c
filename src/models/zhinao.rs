//! 360Zhinao causal LM (`ZhinaoForCausalLM`): the shared decoder (`models::decoder`) and an untied
//! `lm_head` (or the embedding table when `tie_word_embeddings`). Dense (bf16/f16/f32) and
//! GPTQ-Int4 checkpoints in the published layout; 360Zhinao2 loads through the same path.
//! Reference: `tools/fixtures/zhinao_ref.py` (a PyTorch stand-in for the unpublished
//! `modeling_zhinao.py`, cross-checked against transformers' Qwen2).
//!
//! The forward pass is a graph ([`build`]) that `engine::Session` plans and records; the model
//! resolves the graph's weight names (`impl Weights for Zhinao`).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::graph::{Graph, WeightRef, Weights};
use crate::loader::config::{QuantizeConfig, ZhinaoConfig};
use crate::loader::{VarBuilder, WeightFiles};
use crate::models::decoder::{self, Decoder, Layout, Stack};
use crate::models::kv::KvSpec;
pub use crate::models::load::Progress;
use crate::models::load::Uploader;
use crate::ops;
use crate::tensor::{Linear, Weight};

pub struct Zhinao {
    pub decoder: Decoder,
    /// The vocabulary projection `[V, C]`.
    pub lm_head: Weight,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
}

impl Zhinao {
    /// Load a published model directory (bf16/f16/f32 safetensors, sharded or not, or a GPTQ
    /// directory), streaming each tensor from the memory map to the GPU.
    pub fn load(ctx: Arc<Context>, dir: &Path, progress: Progress) -> Result<Zhinao> {
        let cfg = ZhinaoConfig::load(dir)?;
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
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let vb = VarBuilder::new(files);
        let mut up = Uploader::new(&ctx, quant, files.total_bytes() as u64, progress);
        let tied = cfg.tie_word_embeddings && !vb.contains("lm_head.weight");
        let decoder = Decoder::load(ctx.clone(), &mut up, &vb, cfg)?;
        let lm_head = if tied { decoder.embed_tokens.clone() } else { up.table(&vb.pp("lm_head"), v, c)? };
        ctx.sync()?;
        up.finish();
        let weight_bytes = decoder.weight_bytes() + if tied { 0 } else { lm_head.bytes() };
        Ok(Zhinao { decoder, lm_head, weight_bytes })
    }

    pub fn cfg(&self) -> &ZhinaoConfig {
        &self.decoder.cfg
    }

    pub fn ctx(&self) -> &Arc<Context> {
        &self.decoder.ctx
    }

    /// KV-cache bytes for `ctx_len` positions (K and V, f16, all layers).
    pub fn kv_bytes(&self, ctx_len: usize) -> u64 {
        kv_bytes(self.cfg(), ctx_len)
    }
}

/// KV-cache bytes of a model with config `cfg` for `ctx_len` positions (K and V, f16, all layers).
pub fn kv_bytes(cfg: &ZhinaoConfig, ctx_len: usize) -> u64 {
    2 * cfg.num_hidden_layers as u64
        * ctx_len as u64
        * ops::attention::cache_row_bytes(cfg.num_kv_heads(), cfg.head_dim()) as u64
}

impl Weights for Zhinao {
    fn linear(&self, r: &WeightRef) -> Result<&Linear> {
        self.decoder.linear(r)
    }
    fn table(&self, r: &WeightRef) -> Result<&Weight> {
        match (r.layer, r.name) {
            (None, "lm_head") => Ok(&self.lm_head),
            _ => self.decoder.table(r),
        }
    }
    fn vector(&self, r: &WeightRef) -> Result<&GpuBuffer> {
        self.decoder.vector(r)
    }
}

// ---- the forward pass as a graph ----------------------------------------------------------------

/// Which forward [`build`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A prefill chunk of T tokens at pos0 (rewritten on replay) and which logits it produces.
    Prefill(Logits),
    /// One token whose id is already on the device (`ids[0]`); its logits into `logits.0` (the
    /// session's sampler picks the next token on the device).
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

/// The Zhinao forward for `t` tokens of one sequence continuing a KV cache of `ctx_len` rows,
/// described as a graph. Shape-only (no weights): the config, `ctx_len`, and `logit_rows` (rows per
/// logits buffer, bounded by the adapter's binding limit). External tensors: `ids` [T] u32,
/// `pos` [1] u32, the cache arenas `k_cache.{l}.{a}` / `v_cache.{l}.{a}`, `logits.{k}`, and `h` [T, C] in the
/// debugging modes.
pub fn build(cfg: &ZhinaoConfig, ctx_len: usize, logit_rows: usize, t: usize, mode: Mode) -> Result<Graph> {
    build_with(cfg, ctx_len, KvSpec::single_f16(cfg, ctx_len)?, logit_rows, t, mode, Layout::default())
}

/// As [`build`], over a paged cache as `kv` says (format, arenas allocated), for weights laid out
/// as `layout` says.
pub fn build_with(
    cfg: &ZhinaoConfig,
    ctx_len: usize,
    kv: KvSpec,
    logit_rows: usize,
    t: usize,
    mode: Mode,
    layout: Layout,
) -> Result<Graph> {
    let (c, v, layers) = (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers);
    if t == 0 || t > ctx_len || (mode == Mode::Decode && t != 1) {
        return Err(Error::Input(format!("{t} tokens for {mode:?} with a context of {ctx_len}")));
    }
    let mut stack = Stack::session(t, ctx_len, kv, mode == Mode::Decode, layers);
    stack.layout = layout;
    match mode {
        Mode::Embed => (stack.h_external, stack.layers) = (true, 0..0),
        Mode::Layer(l) if l < layers => (stack.embed, stack.h_external, stack.layers) = (false, true, l..l + 1),
        Mode::Layer(l) => return Err(Error::Input(format!("layer {l} of {layers}"))),
        _ => {}
    }
    let mut g = Graph::default();
    let hs = decoder::build(&mut g, cfg, &stack)?;
    let rows: Vec<(usize, usize)> = match mode {
        Mode::Prefill(Logits::All) => {
            let n = logit_rows.max(1);
            (0..t).step_by(n).map(|r| (r, n.min(t - r))).collect()
        }
        Mode::Prefill(Logits::Last) | Mode::Decode => vec![(t - 1, 1)],
        _ => vec![],
    };
    let eps = cfg.rms_norm_eps as f32;
    if mode == Mode::Decode {
        // The final RMSNorm fused into the vocabulary GEMV; the session's sampler reads the row.
        let logits = g.external("logits.0", (v * 4) as u64);
        g.node("lm_head", fused_head(eps, 1), &[hs], &[logits]);
    } else if !rows.is_empty() {
        let x = g.tensor("x_final", (t * c * 4) as u64);
        let norm = ops::norm::RmsNorm { weight: WeightRef::global("norm"), t, c, eps };
        g.node("norm", norm, &[hs], &[x]);
        for (k, &(row0, n)) in rows.iter().enumerate() {
            let logits = g.external(&format!("logits.{k}"), (n * v * 4) as u64);
            let head = ops::matmul::TableMatmul { weight: WeightRef::global("lm_head"), row0, rows: n };
            g.node(format!("lm_head.{k}"), head, &[x], &[logits]);
        }
    }
    Ok(g)
}

/// The final RMSNorm and the vocabulary projection of `t` ≤ `gemv::MAX_T` rows as one GEMV.
fn fused_head(eps: f32, t: usize) -> ops::gemv::Gemv {
    ops::gemv::Gemv {
        weight: ops::gemv::GemvSource::Table(WeightRef::global("lm_head")),
        bias: None,
        norm: Some((WeightRef::global("norm"), eps)),
        silu: false,
        acc: false,
        t,
    }
}

/// One decode step of `b` sequences, sequence b continuing slot b of a pooled f16 cache of
/// `slot_rows` positions per slot (`engine::batch`). External tensors: `ids` [B] u32 (each
/// sequence's token), `pos` [B] u32 (its position), `k_slots.{l}` / `v_slots.{l}`, and
/// `logits.0` [B, V]. Up to `gemv::MAX_T` sequences run the fused GEMV step (each row computed as in
/// a lone decode step); more run the weight matmuls as GEMMs over the B rows.
pub fn build_slots(cfg: &ZhinaoConfig, slot_rows: usize, b: usize, layout: Layout) -> Result<Graph> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let stack = Stack {
        b,
        s: 1,
        kv: decoder::Kv::Slots { slot_rows },
        decode: true,
        embed: true,
        h_external: false,
        layers: 0..cfg.num_hidden_layers,
        layout,
    };
    let mut g = Graph::default();
    let hs = decoder::build(&mut g, cfg, &stack)?;
    let eps = cfg.rms_norm_eps as f32;
    let logits = g.external("logits.0", (b * v * 4) as u64);
    if b <= ops::gemv::MAX_T {
        g.node("lm_head", fused_head(eps, b), &[hs], &[logits]);
    } else {
        let x = g.tensor("x_final", (b * c * 4) as u64);
        g.node("norm", ops::norm::RmsNorm { weight: WeightRef::global("norm"), t: b, c, eps }, &[hs], &[x]);
        g.node(
            "lm_head",
            ops::matmul::TableMatmul { weight: WeightRef::global("lm_head"), row0: 0, rows: b },
            &[x],
            &[logits],
        );
    }
    Ok(g)
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
