// KV cache addressing, included with `#include "kv_cache.wgsl"` (ARCHITECTURE.md, "KV cache layout").
// Per layer, K and V are each [ctx, Hkv, D] f16 packed two per u32, i.e. [ctx, Hkv, D/2] words,
// token-major, the heads of one position contiguous. This is the only place that maps a cache row to
// words: a paged or quantized cache changes this function (and the element format), not its callers.

// First u32 word of (cache row `row`, kv head `kvh`) in a cache of `hkv` heads of `dp` = D/2 words.
fn kv_row_word(row: u32, kvh: u32, hkv: u32, dp: u32) -> u32 {
    return (row * hkv + kvh) * dp;
}
