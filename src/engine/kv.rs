//! A session's paged KV cache on the device: arenas allocated as the context grows (a session
//! that has used 2K positions of a 360K context holds one or two arenas), each layer's K and V
//! arenas being external buffers the forward graphs bind by name (`models::kv::arena_names`).
//! Growing is checked before any work of the pass is done: if the device cannot hold the next
//! arena, the error says how much was needed and the cached tokens stay usable.

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::models::kv::{arena_names, KvSpec};
use crate::ops::kv::{KvFormat, KvLayout};

pub struct KvCache {
    pub spec: KvSpec,
    layers: usize,
    /// Most positions this cache may grow to (the session's context).
    pub ctx_len: usize,
}

impl KvCache {
    /// A cache with an explicit layout (tests force many small arenas this way).
    pub fn with_layout(layout: KvLayout, layers: usize, ctx_len: usize) -> KvCache {
        KvCache { spec: KvSpec { layout, arenas: 0 }, layers, ctx_len }
    }

    pub fn format(&self) -> KvFormat {
        self.spec.layout.fmt
    }

    /// Bytes allocated now (K and V of every layer).
    pub fn bytes(&self) -> u64 {
        self.layers as u64 * 2 * (0..self.spec.arenas).map(|a| self.spec.layout.arena_bytes(a)).sum::<u64>()
    }

    /// Bytes once the whole context is held.
    pub fn max_bytes(&self) -> u64 {
        self.layers as u64 * self.spec.layout.layer_bytes(self.ctx_len)
    }

    /// Allocate the arenas that `positions` need (no more than the context), adding them to
    /// `externals`. Returns whether arenas were added (recorded passes must then be recorded
    /// again). On failure nothing is added and the error names what was asked.
    pub fn grow(&mut self, ctx: &Context, externals: &mut Vec<(String, GpuBuffer)>, positions: usize) -> Result<bool> {
        let want = self.spec.layout.arenas_for(positions.min(self.ctx_len));
        if want <= self.spec.arenas {
            return Ok(false);
        }
        let before = externals.len();
        let layout = self.spec.layout;
        for a in self.spec.arenas..want {
            for l in 0..self.layers {
                let (kn, vn) = arena_names(l, a);
                for name in [kn, vn] {
                    match ctx.buffer(&name, layout.arena_bytes(a)) {
                        Ok(b) => externals.push((name, b)),
                        Err(e) => {
                            externals.truncate(before);
                            let need = self.layers as u64
                                * 2
                                * (self.spec.arenas..want).map(|a| layout.arena_bytes(a)).sum::<u64>();
                            return Err(Error::Device(format!(
                                "the KV cache ({}) cannot grow to {} positions: {:.1} MiB more were needed on top of the {:.1} MiB held ({e}); the {} positions already cached are kept — lower --ctx, or use --kv-type q4",
                                layout.fmt,
                                layout.capacity(want),
                                need as f64 / 1048576.0,
                                self.bytes() as f64 / 1048576.0,
                                layout.capacity(self.spec.arenas)
                            )));
                        }
                    }
                }
            }
        }
        self.spec.arenas = want;
        Ok(true)
    }
}
