//! The decoder's attention over a session's paged KV cache, as graph nodes: which arenas exist
//! ([`KvSpec`]), their external tensor names, and the append + attention nodes of one layer.
//! The kernels are `ops::kv` (formats, append) and `ops::attention_paged`; the buffers belong to
//! `engine::kv::KvCache`.

use crate::error::Result;
use crate::graph::{Graph, TensorId};
use crate::loader::config::ZhinaoConfig;
use crate::ops::attention_paged::{self, PagedDecode, PagedPrefill};
use crate::ops::kv::{KvAppend, KvFormat, KvLayout, KvSource};

/// A session's cache as a graph sees it: the layout and how many arenas are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvSpec {
    pub layout: KvLayout,
    pub arenas: usize,
}

impl KvSpec {
    /// One f16 arena of `ctx_len` positions: the layout the engine used before paging (the
    /// `ops::attention` kernels serve it); used by plans that need no device.
    pub fn single_f16(cfg: &ZhinaoConfig, ctx_len: usize) -> Result<KvSpec> {
        let layout = KvLayout::with_rows(KvFormat::F16, cfg.num_kv_heads(), cfg.head_dim(), ctx_len, ctx_len)?;
        Ok(KvSpec { layout, arenas: 1 })
    }

    /// Positions the allocated arenas hold.
    pub fn capacity(&self) -> usize {
        self.layout.capacity(self.arenas)
    }
}

/// External tensor names of layer `l`'s arena `a`: (K, V).
pub fn arena_names(l: usize, a: usize) -> (String, String) {
    (format!("k_cache.{l}.{a}"), format!("v_cache.{l}.{a}"))
}

/// KV-cache bytes of a model for `positions` (K and V, every layer; the first `sink` in f16; whole
/// arenas excluded).
pub fn kv_bytes(cfg: &ZhinaoConfig, fmt: KvFormat, sink: usize, positions: usize) -> u64 {
    let (hkv, d) = (cfg.num_kv_heads(), cfg.head_dim());
    let sink = if fmt.quantized() { sink.min(positions) } else { 0 };
    let row = |f: KvFormat, n: usize| n as u64 * f.row_bytes(hkv, d) as u64;
    2 * cfg.num_hidden_layers as u64 * (row(KvFormat::F16, sink) + row(fmt, positions - sink))
}

/// Add layer `l`'s cache update and attention over fused rows `qkv [T, H·D | Hkv·D | Hkv·D]`
/// (`qkv_n` elements per row, Q and K after RoPE): K and V are appended at pos[0] in the cache's
/// format, then Q attends over the cache. Returns `attn [T, H·D]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    g: &mut Graph,
    l: usize,
    spec: &KvSpec,
    t: usize,
    h: usize,
    qkv_n: usize,
    decode: bool,
    qkv: TensorId,
    pos: TensorId,
) -> Result<TensorId> {
    let (layout, n) = (spec.layout, spec.arenas);
    let p = |name: &str| format!("layers.{l}.{name}");
    let mut old = Vec::new();
    let mut new = Vec::new();
    for which in [0, 1] {
        for a in 0..n {
            let (kn, vn) = arena_names(l, a);
            let name = if which == 0 { kn } else { vn };
            let e = g.external(&name, layout.arena_bytes(a));
            old.push(e);
            new.push(g.in_place(e, &format!("{name}'")));
        }
    }
    let (hd, kvd) = (h * layout.d, layout.hkv * layout.d);
    let src = KvSource { k_off: hd, k_stride: qkv_n, v_off: hd + kvd, v_stride: qkv_n };
    let mut inputs = vec![qkv, qkv, pos];
    inputs.extend(&old);
    g.node(p("kv_append"), KvAppend { t, layout, arenas: n, src }, &inputs, &new);
    let f32s = |n: usize| (n * 4) as u64;
    let attn = g.tensor(&p("attn"), f32s(t * h * layout.d));
    let mut inputs = vec![qkv, pos];
    inputs.extend(&new);
    if decode {
        let scratch = g.tensor(&p("attn_scratch"), f32s(attention_paged::decode_scratch_len(h, &layout, n)));
        g.node(p("attention"), PagedDecode { h, layout, arenas: n }, &inputs, &[attn, scratch]);
    } else {
        let mut outs = vec![attn];
        if !attention_paged::single_f16(&layout, n) {
            outs.push(g.tensor(&p("attn_state"), f32s(attention_paged::prefill_state_len(t, h))));
        }
        let op = PagedPrefill { t, h, q_stride: qkv_n, layout, arenas: n };
        g.node(p("attention"), op, &inputs, &outs);
    }
    Ok(attn)
}
