// Row normalisations, one workgroup per row (rows folded into y by `grid`), f32 throughout.
//   rms_norm:   y[T, C] = w ⊙ x·rsqrt(mean(x²) + eps)
//   layer_norm: y[T, C] = (x − mean(x))·rsqrt(var(x) + eps) ⊙ w + b   (flag LAYER_NORM; two-pass variance)
// With RESIDUAL the row is first updated in place, x[T, C] += r[T, C], and the normalised value
// is that of the updated row (x then plays the role of the residual stream h).
// Each thread reads back only the elements it wrote itself, so no barrier guards the update.

const WG: u32 = 256u;
#include "reduce.wgsl"

struct Params {
    t: u32,     // rows T
    c: u32,     // row length C
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef RESIDUAL
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // [T, C] (h, updated in place)
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [T, C]
#endif
@group(0) @binding(2) var<storage, read> w: array<f32>;         // [C]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;   // [T, C]
#ifdef LAYER_NORM
@group(0) @binding(4) var<storage, read> b: array<f32>;         // [C]
#ifdef RESIDUAL
@group(0) @binding(5) var<storage, read> r: array<f32>;         // [T, C]
#endif
#else
#ifdef RESIDUAL
@group(0) @binding(4) var<storage, read> r: array<f32>;         // [T, C]
#endif
#endif

// Element `i` of the row after the optional residual update (written back once here).
fn load_update(i: u32) -> f32 {
#ifdef RESIDUAL
    let v = x[i] + r[i];
    x[i] = v;
    return v;
#else
    return x[i];
#endif
}

#ifndef LAYER_NORM
@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.t) { return; }   // uniform per workgroup
    let o = row * p.c;
    var ss = 0.0;
    for (var j = lane.tid; j < p.c; j += WG) {
        let v = load_update(o + j);
        ss += v * v;
    }
    let scale = inverseSqrt(wg_sum(ss, lane) / f32(p.c) + p.eps);
    for (var j = lane.tid; j < p.c; j += WG) {
        y[o + j] = w[j] * (x[o + j] * scale);
    }
}
#endif

#ifdef LAYER_NORM
@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.t) { return; }   // uniform per workgroup
    let o = row * p.c;
    var s = 0.0;
    for (var j = lane.tid; j < p.c; j += WG) {
        s += load_update(o + j);
    }
    let mean = wg_sum(s, lane) / f32(p.c);
    var ss = 0.0;
    for (var j = lane.tid; j < p.c; j += WG) {
        let d = x[o + j] - mean;
        ss += d * d;
    }
    let scale = inverseSqrt(wg_sum(ss, lane) / f32(p.c) + p.eps);
    for (var j = lane.tid; j < p.c; j += WG) {
        y[o + j] = (x[o + j] - mean) * scale * w[j] + b[j];
    }
}
#endif
