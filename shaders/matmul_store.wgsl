// The epilogue shared by matmul.wgsl and matmul_q4.wgsl, included after their bindings: needs
// `p.t`, `p.n` (row stride of y), `p.rows` and `p.row0` (this weight chunk), `y`, and `bias` with BIAS.

// y[t, col] (+)= v (+ bias[col]).
fn store(t: u32, col: u32, v: f32) {
    var r = v;
#ifdef BIAS
    r += bias[col];
#endif
    let i = t * p.n + col;
#ifdef ACC
    r += y[i];
#endif
    y[i] = r;
}

// A GEMM thread's four outputs of token m: chunk-local columns n, n + 16, n + 32, n + 48.
fn store4(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.t) { return; }
    if (n < p.rows) { store(m, p.row0 + n, v.x); }
    if (n + 16u < p.rows) { store(m, p.row0 + n + 16u, v.y); }
    if (n + 32u < p.rows) { store(m, p.row0 + n + 32u, v.z); }
    if (n + 48u < p.rows) { store(m, p.row0 + n + 48u, v.w); }
}
