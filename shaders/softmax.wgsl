// Row softmax in place over x[R, N] f32, one workgroup per row (rows folded into y):
//   softmax:     x = exp(x − max) / Σ exp(x − max)
//   log_softmax: x = x − max − log Σ exp(x − max)      (flag LOG; used by perplexity)
// Three passes over the row: max, sum of exponentials, write.

const WG: u32 = 256u;
#include "reduce.wgsl"

struct Params {
    r: u32,     // rows R (in this chunk)
    n: u32,     // row length N
    skip: u32,  // elements before row 0 in the binding (it starts at an aligned offset)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // [skip + R·N]

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.r) { return; }   // uniform per workgroup
    let o = p.skip + row * p.n;
    var m = -3.40282347e38;
    for (var j = lane.tid; j < p.n; j += WG) { m = max(m, x[o + j]); }
    m = wg_max(m, lane);
    var s = 0.0;
    for (var j = lane.tid; j < p.n; j += WG) { s += exp(x[o + j] - m); }
    s = wg_sum(s, lane);
#ifdef LOG
    let shift = m + log(s);
    for (var j = lane.tid; j < p.n; j += WG) { x[o + j] = x[o + j] - shift; }
#else
    let inv = 1.0 / s;
    for (var j = lane.tid; j < p.n; j += WG) { x[o + j] = exp(x[o + j] - m) * inv; }
#endif
}
