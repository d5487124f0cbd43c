//! Host side of `shaders/rope.wgsl`: NeoX RoPE in place on fused QKV rows [T, (H + 2·Hkv)·D]
//! (Q and K heads rotated in one dispatch, V untouched), plus the f32 inverse-frequency table.

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};

/// Largest angle the shader's range reduction handles exactly (2^18·π/2, see rope.wgsl);
/// positions are limited so that pos · inv_freq[0] = pos stays below it.
pub const MAX_ANGLE: f64 = 411_774.0;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    heads: u32,
    d: u32,
    stride: u32,
    pos0: u32,
    _pad: [u32; 3],
}

/// inv_freq[i] = theta^(−2i/D) for i < D/2, computed in f32 (as the reference model does).
/// Upload it once per model; `cpu::rope` uses the same table.
pub fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect()
}

/// Parameter block of a recorded `rope_qkv` (rewrite it with `ctx.set_params` to move `pos0`).
pub fn params(t: usize, h: usize, hkv: usize, d: usize, pos0: usize) -> Result<Vec<u8>> {
    if (pos0 + t) as f64 > MAX_ANGLE {
        return Err(Error::shape("rope", format!("positions up to {} exceed the supported {MAX_ANGLE}", pos0 + t)));
    }
    let stride = (h + 2 * hkv) * d;
    let p = Params { t: t as u32, heads: (h + hkv) as u32, d: d as u32, stride: stride as u32, pos0: pos0 as u32, _pad: [0; 3] };
    Ok(bytemuck::bytes_of(&p).to_vec())
}

pub fn kernel() -> Kernel {
    Kernel::new("rope", "rope", &[Slot::ReadWrite, Slot::Read])
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel()]
}

/// Rotate, in place, the Q (H heads) and K (Hkv heads) parts of `qkv` [T, (H + 2·Hkv)·D] with
/// positions pos0 .. pos0 + T. `inv_freq` is [D/2] f32 (see [`inv_freq`]).
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    ctx: &Context,
    qkv: &GpuBuffer,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    inv_freq: &GpuBuffer,
) -> Result<Dispatch> {
    if t == 0 || h == 0 || d == 0 || d % 2 != 0 {
        return Err(Error::shape("rope", format!("T={t} H={h} Hkv={hkv} D={d} (D must be even, T, H > 0)")));
    }
    if (pos0 + t) as f64 > MAX_ANGLE {
        return Err(Error::shape("rope", format!("positions up to {} exceed the supported {MAX_ANGLE}", pos0 + t)));
    }
    let stride = (h + 2 * hkv) * d;
    let pairs = t * (h + hkv) * d / 2;
    if pairs > u32::MAX as usize / 2 {
        return Err(Error::shape("rope", format!("{pairs} rotation pairs")));
    }
    need_f32("rope", "qkv [T, (H + 2Hkv)·D]", qkv, t * stride)?;
    need_f32("rope", "inv_freq [D/2]", inv_freq, d / 2)?;
    let params = params(t, h, hkv, d, pos0)?;
    let bufs = [qkv.slice(0, (t * stride * 4) as u64), inv_freq.slice(0, (d / 2 * 4) as u64)];
    ctx.dispatch(&kernel(), &params, &bufs, grid(ctx, (pairs as u32).div_ceil(256)))
}
