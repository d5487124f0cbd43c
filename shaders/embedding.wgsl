// Embedding gather: out[T, C] f32 = table[ids[t], :] for the rows of one table chunk.
// The table is a `Weight` split by rows; each dispatch binds one chunk (rows row0 .. row0+rows,
// stored as W_F32, W_F16 or W_BF16 u32 words, `row_words` per row) and writes only the tokens
// whose id falls in it. One workgroup per token (folded into y), threads stride over C.
#include "common.wgsl"

const WG: u32 = 256u;

struct Params {
    t: u32,          // tokens T
    c: u32,          // row length C
    row_words: u32,  // u32 words per table row
    row0: u32,       // first table row of this chunk
    rows: u32,       // rows in this chunk
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;         // [T]
@group(0) @binding(2) var<storage, read> table: array<u32>;       // [rows, row_words]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // [T, C]

@compute @workgroup_size(WG)
fn gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.t) { return; }
    let id = ids[t];
    if (id < p.row0 || id - p.row0 >= p.rows) { return; }   // another chunk's row
    let base = (id - p.row0) * p.row_words;
    for (var j = lid; j < p.c; j += WG) {
#ifdef W_F32
        out[t * p.c + j] = bitcast<f32>(table[base + j]);
#else
        let v = unpack_w2(table[base + j / 2u]);
        out[t * p.c + j] = select(v.x, v.y, (j & 1u) == 1u);
#endif
    }
}
