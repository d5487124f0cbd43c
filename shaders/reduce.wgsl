// Workgroup-wide reductions, included with `#include "reduce.wgsl"`. Needs `const WG` (the
// workgroup size, a power of two). With SUBGROUPS: subgroupAdd/Max inside each subgroup, then one
// partial per subgroup through workgroup memory; without: a shared-memory tree.
// Call from uniform control flow only.

struct Lane {
    @builtin(local_invocation_index) tid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

var<workgroup> red4: array<vec4<f32>, WG>;

fn wg_sum4(v: vec4<f32>, lane: Lane) -> vec4<f32> {
    workgroupBarrier();
#ifdef SUBGROUPS
    let s = subgroupAdd(v);
    if (lane.sg_lane == 0u) { red4[lane.sg_id] = s; }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    for (var i = 0u; i < lane.sg_count; i++) { total += red4[i]; }
#else
    red4[lane.tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lane.tid < s) { red4[lane.tid] += red4[lane.tid + s]; }
        workgroupBarrier();
    }
    let total = red4[0];
#endif
    workgroupBarrier();
    return total;
}

fn wg_sum(v: f32, lane: Lane) -> f32 {
    return wg_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), lane).x;
}

fn wg_max(v: f32, lane: Lane) -> f32 {
    workgroupBarrier();
#ifdef SUBGROUPS
    let s = subgroupMax(v);
    if (lane.sg_lane == 0u) { red4[lane.sg_id].x = s; }
    workgroupBarrier();
    var m = red4[0].x;
    for (var i = 1u; i < lane.sg_count; i++) { m = max(m, red4[i].x); }
#else
    red4[lane.tid].x = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lane.tid < s) { red4[lane.tid].x = max(red4[lane.tid].x, red4[lane.tid + s].x); }
        workgroupBarrier();
    }
    let m = red4[0].x;
#endif
    workgroupBarrier();
    return m;
}
