// Argmax over rows on the device. Order: larger value first, ties to the lower index (as the
// CPU twin).
//   argmax:       ids[row0 + r], vals[row0 + r] = argmax / max of x[r, :] over x[R, N],
//                 one workgroup per row (folded into y).

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

struct Params {
    r: u32,       // rows in this dispatch
    n: u32,       // row length N
    k: u32,       // unused
    row0: u32,    // output index of row 0 of this dispatch
    skip: u32,    // elements before row 0 in x's binding (it starts at an aligned offset)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;

// Is (v, i) ordered before (w, j)? Index NONE marks "no element" and comes last (and once a
// selection round finds nothing, every later round finds nothing). NaN inputs are undefined.
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    if (i == NONE) { return false; }
    if (j == NONE) { return true; }
    return v > w || (v == w && i < j);
}

// The first element (in the order above) of the pairs held by the workgroup's threads.
// Call from uniform control flow; every thread gets the result.
fn wg_best(v: f32, i: u32, tid: u32) -> vec2<u32> {
    workgroupBarrier();
    red_v[tid] = v;
    red_i[tid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s && before(red_v[tid + s], red_i[tid + s], red_v[tid], red_i[tid])) {
            red_v[tid] = red_v[tid + s];
            red_i[tid] = red_i[tid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<u32>(bitcast<u32>(red_v[0]), red_i[0]);
    workgroupBarrier();
    return r;
}

#ifdef ARGMAX
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [skip + R·N]
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;   // [row0 + R]
@group(0) @binding(3) var<storage, read_write> vals: array<f32>;  // [row0 + R]

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.r) { return; }   // uniform per workgroup
    let o = p.skip + row * p.n;
    var bv = 0.0;
    var bi = NONE;
    // Ascending scan with a strict comparison keeps the lowest index among equal values.
    for (var j = tid; j < p.n; j += WG) {
        let v = x[o + j];
        if (before(v, j, bv, bi)) { bv = v; bi = j; }
    }
    let b = wg_best(bv, bi, tid);
    if (tid == 0u) {
        ids[p.row0 + row] = b.y;
        vals[p.row0 + row] = bitcast<f32>(b.x);
    }
}
#endif
