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
