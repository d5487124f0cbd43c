//! Host side of `shaders/kv.wgsl`: the paged, optionally quantized KV cache: element formats
//! ([`KvFormat`]: f16, q8, q4), the arena geometry ([`KvLayout`]) and the append kernel that writes
//! a pass's K and V rows into the arenas (position read from the GPU `pos` buffer).
//!
//! A layer's K and V each live in arenas `a = 0, 1, ..`: buffers of `arena_rows(a)` positions,
//! arena a holding positions `arena_row0(a) ..`. Arenas double in size from `first_rows` up to
//! `max_rows` (the most one storage binding holds), so a session holds at most about twice the
//! positions it has used, and the number of arenas (dispatches per layer) grows only
//! logarithmically until the binding cap. Inside one arena (u32 words):
//! `values [rows, Hkv, D / EPW]` then, for q8/q4, `scales [rows, Hkv, D / 32]` (one word per group
//! of 32: f16 scale, f16 min; element = code · scale + min).
//!
//! A quantized cache may keep its first `sink` positions in f16 (attention sinks: the first tokens
//! draw much of every query's attention, so their keys are worth exact storage): they form arena 0,
//! an f16 arena of `sink` rows, and the quantized arenas follow. Every kernel runs per arena, each
//! arena with its own format's variant.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, Weights};

/// Elements per scale group of the quantized formats.
pub const GROUP: usize = 32;
/// Positions of the first arena (later ones double, up to the binding cap).
pub const FIRST_ROWS: usize = 4096;
/// Arena sizes derived from a binding limit are whole pages of this many positions.
pub const PAGE: usize = 256;
/// Positions a quantized cache keeps in f16 at its start unless told otherwise (`--kv-sink`).
pub const SINK: usize = 16;

/// How K and V are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvFormat {
    /// f16, two per word (16 bits per value).
    #[default]
    F16,
    /// 8-bit codes, per token and per group of 32 channels an f16 scale and min (9 bits per value).
    Q8,
    /// 4-bit codes, same groups (5 bits per value); K is rotated by a 32-point Hadamard transform
    /// per group before quantizing, and a cache keeps its first [`SINK`] positions in f16 (both
    /// chosen by measurement: `cpu::kv::key_error_study`).
    Q4,
}

impl KvFormat {
    pub const ALL: [KvFormat; 3] = [KvFormat::F16, KvFormat::Q8, KvFormat::Q4];

    pub fn parse(s: &str) -> Result<KvFormat> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" => Ok(KvFormat::F16),
            "q8" | "q8_0" | "int8" => Ok(KvFormat::Q8),
            "q4" | "q4_0" | "int4" => Ok(KvFormat::Q4),
            _ => Err(Error::Input(format!("unknown KV type '{s}' (f16, q8 or q4)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "q8",
            KvFormat::Q4 => "q4",
        }
    }

    /// Elements per u32 word.
    pub fn epw(self) -> usize {
        match self {
            KvFormat::F16 => 2,
            KvFormat::Q8 => 4,
            KvFormat::Q4 => 8,
        }
    }

    pub fn quantized(self) -> bool {
        self != KvFormat::F16
    }

    /// Largest code (quantized formats).
    pub fn qmax(self) -> u32 {
        match self {
            KvFormat::F16 => 0,
            KvFormat::Q8 => 255,
            KvFormat::Q4 => 15,
        }
    }

    /// f16 positions at the start of a cache of this format: `requested`, default [`SINK`], for
    /// the quantized formats; none for f16.
    pub fn sink(self, requested: Option<usize>) -> usize {
        if self.quantized() {
            requested.unwrap_or(SINK)
        } else {
            0
        }
    }

    /// Whether keys are Hadamard-rotated per group of 32 before quantizing.
    pub fn rotates_keys(self) -> bool {
        self == KvFormat::Q4
    }

    /// Words of one head row (values only).
    pub fn words(self, d: usize) -> usize {
        d / self.epw()
    }

    /// Bytes of one position of one layer's K (or V): values plus scales.
    pub fn row_bytes(self, hkv: usize, d: usize) -> usize {
        let scales = if self.quantized() { d / GROUP } else { 0 };
        hkv * (self.words(d) + scales) * 4
    }

    /// Head dims this format supports: even and at most 256; a multiple of 32 when quantized.
    pub fn check(self, d: usize) -> Result<()> {
        let ok = d > 0 && d <= 256 && d.is_multiple_of(2) && (!self.quantized() || d.is_multiple_of(GROUP));
        if !ok {
            let need = if self.quantized() { "a multiple of 32" } else { "even" };
            return Err(Error::Unsupported(format!(
                "KV type {}: head dim {d} must be {need} and at most 256",
                self.name()
            )));
        }
        Ok(())
    }

    /// The format's defines on a kernel; `keys` adds the rotation where the format rotates keys.
    pub fn apply(self, k: Kernel, d: usize, keys: bool) -> Kernel {
        let k = k.define("D", format!("{d}u"));
        let k = match self {
            KvFormat::F16 => k.flag("FMT_F16"),
            KvFormat::Q8 => k.flag("FMT_Q8"),
            KvFormat::Q4 => k.flag("FMT_Q4"),
        };
        k.flag_if(keys && self.rotates_keys(), "KROT")
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of one layer's paged cache: format, heads, the f16 sink and the arena sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvLayout {
    pub fmt: KvFormat,
    pub hkv: usize,
    pub d: usize,
    /// Positions 0 .. sink held in f16 in arena 0 (quantized formats; 0: none).
    pub sink: usize,
    /// Positions of arena 0.
    pub first_rows: usize,
    /// Most positions of one arena (its bytes fit one storage binding).
    pub max_rows: usize,
}

/// One arena's place in the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaSpan {
    pub row0: usize,
    pub rows: usize,
}

impl KvLayout {
    /// The layout for a device whose storage bindings hold `max_binding` bytes: arenas are whole
    /// pages, from [`FIRST_ROWS`] positions up to what one binding holds; an f16 sink of
    /// [`KvFormat::sink`] positions, which must fit a binding too.
    pub fn for_binding(fmt: KvFormat, hkv: usize, d: usize, sink: Option<usize>, max_binding: u64) -> Result<KvLayout> {
        fmt.check(d)?;
        let row = fmt.row_bytes(hkv, d) as u64;
        let fit = (max_binding / row) as usize / PAGE * PAGE;
        if fit == 0 {
            return Err(Error::LimitTooSmall {
                what: format!("a KV-cache page ({PAGE} positions of {} bytes, {fmt})", row),
                requested: row * PAGE as u64,
                available: max_binding,
            });
        }
        let layout = Self::with_rows(fmt, hkv, d, FIRST_ROWS.min(fit), fit)?.with_sink(fmt.sink(sink))?;
        let sink_bytes = layout.sink as u64 * KvFormat::F16.row_bytes(hkv, d) as u64;
        if sink_bytes > max_binding {
            return Err(Error::LimitTooSmall {
                what: format!("the f16 sink of {} positions (--kv-sink)", layout.sink),
                requested: sink_bytes,
                available: max_binding,
            });
        }
        Ok(layout)
    }

    /// A layout with explicit arena sizes (tests force many small arenas this way).
    pub fn with_rows(fmt: KvFormat, hkv: usize, d: usize, first_rows: usize, max_rows: usize) -> Result<KvLayout> {
        fmt.check(d)?;
        if hkv == 0 || first_rows == 0 || max_rows < first_rows {
            return Err(Error::Input(format!("KV layout: Hkv {hkv}, arena rows {first_rows}..{max_rows}")));
        }
        if max_rows as u64 * fmt.row_bytes(hkv, d) as u64 >= 1 << 32 {
            return Err(Error::Input(format!("KV layout: an arena of {max_rows} positions exceeds 4 GiB")));
        }
        Ok(KvLayout { fmt, hkv, d, sink: 0, first_rows, max_rows })
    }

    /// This layout keeping its first `sink` positions in f16 (an f16 layout has nothing to keep:
    /// its sink stays 0).
    pub fn with_sink(self, sink: usize) -> Result<KvLayout> {
        if !self.fmt.quantized() {
            return Ok(KvLayout { sink: 0, ..self });
        }
        if sink as u64 * KvFormat::F16.row_bytes(self.hkv, self.d) as u64 >= 1 << 32 {
            return Err(Error::Input(format!("KV layout: an f16 sink of {sink} positions exceeds 4 GiB")));
        }
        Ok(KvLayout { sink, ..self })
    }

    /// Arenas before the quantized ones (1 with a sink, else 0).
    fn sink_arenas(&self) -> usize {
        usize::from(self.sink > 0)
    }

    /// Format of arena `a`: f16 for the sink arena, the layout's format otherwise.
    pub fn arena_fmt(&self, a: usize) -> KvFormat {
        if a < self.sink_arenas() {
            KvFormat::F16
        } else {
            self.fmt
        }
    }

    /// Positions of arena `a`.
    pub fn arena_rows(&self, a: usize) -> usize {
        if a < self.sink_arenas() {
            return self.sink;
        }
        let a = a - self.sink_arenas();
        if a >= 40 {
            return self.max_rows;
        }
        (self.first_rows << a).min(self.max_rows)
    }

    /// The first `n` arenas' spans.
    pub fn spans(&self, n: usize) -> Vec<ArenaSpan> {
        let mut row0 = 0;
        (0..n)
            .map(|a| {
                let s = ArenaSpan { row0, rows: self.arena_rows(a) };
                row0 += s.rows;
                s
            })
            .collect()
    }

    /// Arenas needed to hold `positions` (at least one).
    pub fn arenas_for(&self, positions: usize) -> usize {
        let (mut n, mut held) = (0, 0);
        while held < positions.max(1) {
            held += self.arena_rows(n);
            n += 1;
        }
        n
    }

    /// Positions the first `n` arenas hold.
    pub fn capacity(&self, n: usize) -> usize {
        (0..n).map(|a| self.arena_rows(a)).sum()
    }

    /// Bytes of arena `a` (one of K or V).
    pub fn arena_bytes(&self, a: usize) -> u64 {
        (self.arena_rows(a) * self.arena_fmt(a).row_bytes(self.hkv, self.d)) as u64
    }

    /// Bytes of K and V of one layer once `positions` are held (whole arenas).
    pub fn layer_bytes(&self, positions: usize) -> u64 {
        2 * (0..self.arenas_for(positions)).map(|a| self.arena_bytes(a)).sum::<u64>()
    }
}

// ---- append --------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AppendParams {
    t: u32,
    hkv: u32,
    row0: u32,
    rows: u32,
    k_off: u32,
    k_stride: u32,
    v_off: u32,
    v_stride: u32,
}

pub fn append_kernel(fmt: KvFormat, d: usize) -> Kernel {
    let slots = [Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];
    fmt.apply(Kernel::new("kv", "kv_append", &slots).flag("KV_APPEND"), d, true)
}

/// Where a pass's K and V rows are read from: element offsets of token 0's first K (V) head and
/// the elements between consecutive tokens (separate `[T, Hkv·D]` tensors: offset 0, stride Hkv·D;
/// fused qkv rows: offsets H·D and (H + Hkv)·D, stride (H + 2·Hkv)·D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvSource {
    pub k_off: usize,
    pub k_stride: usize,
    pub v_off: usize,
    pub v_stride: usize,
}

impl KvSource {
    pub fn separate(hkv: usize, d: usize) -> KvSource {
        KvSource { k_off: 0, k_stride: hkv * d, v_off: 0, v_stride: hkv * d }
    }
}

fn need(op: &str, what: &str, buf: &GpuBuffer, bytes: u64) -> Result<()> {
    if buf.size < bytes {
        return Err(Error::shape(op, format!("{what}: buffer of {} bytes, need {bytes}", buf.size)));
    }
    Ok(())
}

/// Record the append of `t` tokens' K and V (f32, read through `src`) at positions pos[0] ..
/// pos[0] + t into the arenas `kc[a]`, `vc[a]` of `layout` (one dispatch per arena, in the
/// arena's format; each writes the rows that fall in it). The keys of a rotating format are
/// Hadamard-rotated here.
#[allow(clippy::too_many_arguments)]
pub fn append(
    ctx: &Context,
    k: &GpuBuffer,
    v: &GpuBuffer,
    src: &KvSource,
    t: usize,
    layout: &KvLayout,
    pos: &GpuBuffer,
    kc: &[GpuBuffer],
    vc: &[GpuBuffer],
) -> Result<Vec<Dispatch>> {
    let (hkv, d) = (layout.hkv, layout.d);
    if t == 0 || kc.is_empty() || kc.len() != vc.len() {
        return Err(Error::shape("kv_append", format!("T = {t}, {} K and {} V arenas", kc.len(), vc.len())));
    }
    let end = |off: usize, stride: usize| ((off + (t - 1) * stride + hkv * d) * 4) as u64;
    need("kv_append", "k rows", k, end(src.k_off, src.k_stride))?;
    need("kv_append", "v rows", v, end(src.v_off, src.v_stride))?;
    need("kv_append", "pos [1]", pos, 4)?;
    let mut out = Vec::new();
    for (a, (span, (ka, va))) in layout.spans(kc.len()).iter().zip(kc.iter().zip(vc)).enumerate() {
        let fmt = layout.arena_fmt(a);
        let threads = t * hkv * if fmt.quantized() { d / GROUP } else { d / 2 };
        let bytes = layout.arena_bytes(a);
        need("kv_append", "K arena", ka, bytes)?;
        need("kv_append", "V arena", va, bytes)?;
        let p = AppendParams {
            t: t as u32,
            hkv: hkv as u32,
            row0: span.row0 as u32,
            rows: span.rows as u32,
            k_off: src.k_off as u32,
            k_stride: src.k_stride as u32,
            v_off: src.v_off as u32,
            v_stride: src.v_stride as u32,
        };
        let bufs = [k.whole(), v.whole(), pos.slice(0, 4), ka.slice(0, bytes), va.slice(0, bytes)];
        let groups = grid(ctx, threads.div_ceil(64) as u32);
        out.push(ctx.dispatch(&append_kernel(fmt, d), bytemuck::bytes_of(&p), &bufs, groups)?);
    }
    Ok(out)
}

pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for fmt in KvFormat::ALL {
        for d in [64, 128, 256] {
            v.push(append_kernel(fmt, d));
        }
    }
    v
}

/// Graph op: `k, v, pos, kc_0 .. kc_{A-1}, vc_0 .. vc_{A-1} -> kc'_0 .., vc'_0 ..`: the pass's T
/// rows of K and V appended at pos[0] (the arenas are a session's external tensors).
#[derive(Debug)]
pub struct KvAppend {
    pub t: usize,
    pub layout: KvLayout,
    pub arenas: usize,
    pub src: KvSource,
}

impl Op for KvAppend {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (k, v, pos) = (io.input(0)?, io.input(1)?, io.input(2)?);
        let n = self.arenas;
        let kc = (0..n).map(|a| io.output(a).cloned()).collect::<Result<Vec<_>>>()?;
        let vc = (0..n).map(|a| io.output(n + a).cloned()).collect::<Result<Vec<_>>>()?;
        append(ctx, k, v, &self.src, self.t, &self.layout, pos, &kc, &vc)
    }
}
