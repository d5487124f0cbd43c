//! Buffer planning by liveness and recording: a [`Plan`] orders a graph and gives every pooled
//! storage a slot (tensors whose lifetimes overlap never share one; a freed slot is reused
//! best-fit by size); an [`Executable`] binds the slots to buffers from an [`Arena`], records every
//! node through `ops::*` into one list of dispatches (one compute pass, one submit, no readback
//! mid-forward) and remembers which dispatches carry the position, so a replay rewrites only those
//! parameter blocks (ops that read the position from a GPU buffer need none). Reference: ratchet's
//! `executable.rs` and `gpu/buffer_allocator/`.

use super::{Bound, Graph, NodeId, Storage, TensorId, Weights};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};

/// The order of a graph and its buffer assignment. Shape-only: no device needed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub order: Vec<NodeId>,
    /// Slot of each tensor's storage (`None` for external or untouched tensors).
    pub slot: Vec<Option<usize>>,
    /// Bytes of each slot (the largest tensor it ever holds).
    pub slot_bytes: Vec<u64>,
}

/// What a plan saves over one buffer per pooled storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanStats {
    /// Pooled virtual tensors (in-place versions included).
    pub tensors: usize,
    /// Distinct pooled storages (versions of one tensor share one).
    pub storages: usize,
    /// Buffers the plan uses.
    pub buffers: usize,
    pub planned_bytes: u64,
    /// Bytes if every pooled storage had its own buffer.
    pub naive_bytes: u64,
}

impl Plan {
    pub fn new(g: &Graph) -> Result<Plan> {
        let order = g.order()?;
        let n = g.tensors.len();
        // Live interval [first write, last touch] of each pooled root, in steps of `order`.
        let (mut first, mut last) = (vec![usize::MAX; n], vec![0usize; n]);
        for (step, &i) in order.iter().enumerate() {
            let node = &g.nodes[i];
            for &o in &node.outputs {
                let r = g.root(o);
                first[r] = first[r].min(step);
                last[r] = last[r].max(step);
            }
            for &t in &node.inputs {
                let r = g.root(t);
                if g.tensors[r].storage == Storage::Pooled && first[r] == usize::MAX {
                    return Err(Error::shape(
                        "graph",
                        format!("node '{}' reads '{}' before any node writes it", node.name, g.tensors[t].name),
                    ));
                }
                last[r] = last[r].max(step);
            }
        }
        for (t, d) in g.tensors.iter().enumerate() {
            if d.keep {
                last[g.root(t)] = order.len();
            }
        }
        let pooled = |r: usize| g.tensors[r].storage == Storage::Pooled && first[r] != usize::MAX;
        let mut slot = vec![None; n];
        let mut slot_bytes: Vec<u64> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for step in 0..order.len() {
            for r in (0..n).filter(|&r| pooled(r) && first[r] == step) {
                let need = g.tensors[r].bytes;
                let fit =
                    free.iter().enumerate().filter(|(_, &s)| slot_bytes[s] >= need).min_by_key(|(_, &s)| slot_bytes[s]);
                let pick = fit.or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| slot_bytes[s])).map(|(k, _)| k);
                let s = match pick {
                    Some(k) => free.swap_remove(k),
                    None => {
                        slot_bytes.push(0);
                        slot_bytes.len() - 1
                    }
                };
                slot_bytes[s] = slot_bytes[s].max(need);
                slot[r] = Some(s);
            }
            for r in (0..n).filter(|&r| pooled(r) && last[r] == step) {
                free.extend(slot[r]);
            }
        }
        for t in 0..n {
            slot[t] = slot[g.root(t)];
        }
        Ok(Plan { order, slot, slot_bytes })
    }

    pub fn stats(&self, g: &Graph) -> PlanStats {
        let roots: Vec<usize> = (0..g.tensors.len())
            .filter(|&t| g.tensors[t].storage == Storage::Pooled && self.slot[t].is_some())
            .collect();
        PlanStats {
            tensors: (0..g.tensors.len()).filter(|&t| self.slot[t].is_some()).count(),
            storages: roots.len(),
            buffers: self.slot_bytes.len(),
            planned_bytes: self.slot_bytes.iter().sum(),
            naive_bytes: roots.iter().map(|&r| g.tensors[r].bytes).sum(),
        }
    }
}

/// Buffers behind plan slots, shared by every executable of one session (they run one at a time
/// and keep nothing in pooled buffers between runs).
#[derive(Default)]
pub struct Arena {
    bufs: Vec<GpuBuffer>,
}

impl Arena {
    /// Make slot i at least `sizes[i]` bytes. Returns true when an existing buffer was replaced
    /// (executables recorded before still hold the old one: drop them to free it).
    pub fn reserve(&mut self, ctx: &Context, sizes: &[u64]) -> Result<bool> {
        let mut grew = false;
        for (i, &bytes) in sizes.iter().enumerate() {
            match self.bufs.get(i) {
                Some(b) if b.size >= bytes => {}
                Some(_) => {
                    self.bufs[i] = ctx.buffer(&format!("activations {i}"), bytes)?;
                    grew = true;
                }
                None => self.bufs.push(ctx.buffer(&format!("activations {i}"), bytes)?),
            }
        }
        Ok(grew)
    }
    pub fn bytes(&self) -> u64 {
        self.bufs.iter().map(|b| b.size).sum()
    }
}

/// A graph recorded once: its dispatches, the buffer of every tensor, and the dispatch ranges of
/// the position-dependent nodes.
pub struct Executable {
    pub graph: Graph,
    pub plan: Plan,
    dispatches: Vec<Dispatch>,
    buffers: Vec<Option<GpuBuffer>>,
    dynamic: Vec<(NodeId, std::ops::Range<usize>)>,
}

impl Executable {
    /// Bind `plan`'s slots to `arena` (grown as needed) and `graph`'s external tensors by name
    /// from `externals`, and record every node for position 0 (call [`Executable::set_pos`]).
    pub fn new(
        ctx: &Context,
        graph: Graph,
        plan: Plan,
        w: &dyn Weights,
        arena: &mut Arena,
        externals: &[(String, GpuBuffer)],
    ) -> Result<Executable> {
        if plan.slot.len() != graph.tensors.len() || plan.order.len() != graph.nodes.len() {
            return Err(Error::shape("graph", "the plan was made for another graph"));
        }
        arena.reserve(ctx, &plan.slot_bytes)?;
        let mut buffers = Vec::with_capacity(graph.tensors.len());
        for t in 0..graph.tensors.len() {
            let root = &graph.tensors[graph.root(t)];
            buffers.push(match (root.storage, plan.slot[t]) {
                (Storage::External, _) => {
                    let b = externals.iter().find(|(n, _)| *n == root.name).map(|(_, b)| b.clone());
                    Some(b.ok_or_else(|| Error::shape("graph", format!("external tensor '{}' not bound", root.name)))?)
                }
                (_, Some(s)) => Some(arena.bufs[s].clone()),
                _ => None,
            });
        }
        let mut exe = Executable { graph, plan, dispatches: Vec::new(), buffers, dynamic: Vec::new() };
        for k in 0..exe.plan.order.len() {
            let i = exe.plan.order[k];
            let start = exe.dispatches.len();
            let ds = exe
                .record(ctx, i, w)
                .map_err(|e| Error::shape("graph", format!("node '{}': {e}", exe.graph.nodes[i].name)))?;
            exe.dispatches.extend(ds);
            if exe.graph.nodes[i].op.uses_pos() {
                exe.dynamic.push((i, start..exe.dispatches.len()));
            }
        }
        Ok(exe)
    }

    fn buf(&self, t: TensorId) -> Result<&GpuBuffer> {
        self.buffers[t]
            .as_ref()
            .ok_or_else(|| Error::shape("graph", format!("tensor '{}' has no buffer", self.graph.tensors[t].name)))
    }

    fn record(&self, ctx: &Context, i: NodeId, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let node = &self.graph.nodes[i];
        let bufs = |list: &[TensorId]| list.iter().map(|&t| self.buf(t)).collect::<Result<Vec<_>>>();
        let io = Bound { node: &node.name, inputs: bufs(&node.inputs)?, outputs: bufs(&node.outputs)? };
        node.op.record(ctx, &io, w)
    }

    /// Rewrite the parameters of every position-dependent dispatch for a pass whose first token
    /// sits at `pos0` (ops that read the position from a GPU buffer need nothing here: the owner
    /// writes that buffer).
    pub fn set_pos(&self, ctx: &Context, pos0: usize) -> Result<()> {
        for (i, range) in &self.dynamic {
            self.graph.nodes[*i].op.set_pos(ctx, &self.dispatches[range.clone()], pos0)?;
        }
        Ok(())
    }

    /// The recorded dispatches in order (to submit them with others, or to count and profile them).
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Encode every dispatch into one compute pass and submit (no wait, no readback).
    pub fn run(&self, ctx: &Context) -> Result<()> {
        ctx.run(&self.dispatches.iter().collect::<Vec<_>>())
    }

    /// Debug hook: read back a tensor by name after a run, as f32. Only external tensors and those
    /// marked `keep` before planning hold their contents after the pass (a version reads as its
    /// storage's last version).
    pub fn read_f32(&self, ctx: &Context, name: &str) -> Result<Vec<f32>> {
        let t = self.graph.find(name).ok_or_else(|| Error::Input(format!("no tensor named '{name}' in the graph")))?;
        let root = self.graph.root(t);
        let d = &self.graph.tensors[root];
        let kept = d.storage == Storage::External
            || (0..self.graph.tensors.len()).any(|v| self.graph.root(v) == root && self.graph.tensors[v].keep);
        if !kept {
            return Err(Error::Input(format!(
                "tensor '{name}' is pooled and was not kept (Graph::keep before planning)"
            )));
        }
        ctx.read_f32(self.buf(t)?, 0, (self.graph.tensors[t].bytes / 4) as usize)
    }
}

/// Executables recorded once per key (a shape bucket, a mode) and replayed, sharing one [`Arena`];
/// the least recently recorded is dropped beyond `cap`. `recordings()` counts every recording, so a
/// test can check that repeated calls of one shape replay instead of recording again.
pub struct ExeCache<K> {
    arena: Arena,
    entries: Vec<(K, Executable)>,
    cap: usize,
    recordings: usize,
}

impl<K: PartialEq> ExeCache<K> {
    pub fn new(cap: usize) -> ExeCache<K> {
        ExeCache { arena: Arena::default(), entries: Vec::new(), cap: cap.max(1), recordings: 0 }
    }

    pub fn get(&self, key: &K) -> Option<&Executable> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// Plan `graph` and record it under `key`, binding its external tensors from `externals`.
    /// If the arena had to grow, every executable recorded before is dropped (it binds the old
    /// buffers).
    pub fn insert(
        &mut self,
        ctx: &Context,
        key: K,
        graph: Graph,
        w: &dyn Weights,
        externals: &[(String, GpuBuffer)],
    ) -> Result<&Executable> {
        let plan = Plan::new(&graph)?;
        if self.arena.reserve(ctx, &plan.slot_bytes)? {
            self.entries.clear();
        }
        let exe = Executable::new(ctx, graph, plan, w, &mut self.arena, externals)?;
        self.recordings += 1;
        self.entries.retain(|(k, _)| *k != key);
        if self.entries.len() >= self.cap {
            self.entries.remove(0);
        }
        self.entries.push((key, exe));
        Ok(&self.entries[self.entries.len() - 1].1)
    }

    /// Grow the arena for `graph` without recording it (sizes memory up front, so running out
    /// shows at start rather than mid-conversation).
    pub fn reserve(&mut self, ctx: &Context, graph: &Graph) -> Result<()> {
        if self.arena.reserve(ctx, &Plan::new(graph)?.slot_bytes)? {
            self.entries.clear();
        }
        Ok(())
    }

    /// How many executables were recorded since creation.
    pub fn recordings(&self) -> usize {
        self.recordings
    }

    /// Bytes of activation buffers.
    pub fn arena_bytes(&self) -> u64 {
        self.arena.bytes()
    }

    /// Drop every executable (e.g. after an external buffer was replaced).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[derive(Debug)]
    struct Nop;
    impl Op for Nop {
        fn record(&self, _: &Context, _: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
            Ok(Vec::new())
        }
    }

    fn op() -> Nop {
        Nop
    }

    #[test]
    fn overlapping_tensors_never_share_and_a_chain_reuses() {
        // a and b are both alive at "join"; c, d reuse their buffers.
        let mut g = Graph::default();
        let x = g.external("x", 16);
        let (a, b, c, d) = (g.tensor("a", 16), g.tensor("b", 16), g.tensor("c", 16), g.tensor("d", 64));
        g.node("a", op(), &[x], &[a]);
        g.node("b", op(), &[x], &[b]);
        g.node("join", op(), &[a, b], &[c]);
        g.node("d", op(), &[c], &[d]);
        let p = Plan::new(&g).unwrap();
        assert_ne!(p.slot[a], p.slot[b]);
        assert_ne!(p.slot[a], p.slot[c]);
        assert_ne!(p.slot[b], p.slot[c]);
        assert_ne!(p.slot[c], p.slot[d]);
        assert_eq!(p.slot[x], None, "external tensors are not pooled");
        let s = p.stats(&g);
        assert_eq!((s.storages, s.buffers), (4, 3), "{s:?}");
        assert_eq!(s.naive_bytes, 16 * 3 + 64);
        // Every pair alive at the same step has distinct slots (checked exhaustively on a chain).
        let mut g = Graph::default();
        let mut prev = g.external("in", 32);
        let mut ts = Vec::new();
        for k in 0..10 {
            let t = g.tensor(&format!("t{k}"), 32);
            g.node(format!("n{k}"), op(), &[prev], &[t]);
            ts.push(t);
            prev = t;
        }
        let p = Plan::new(&g).unwrap();
        assert_eq!(p.slot_bytes.len(), 2, "a chain ping-pongs between two buffers");
        for w in ts.windows(2) {
            assert_ne!(p.slot[w[0]], p.slot[w[1]]);
        }
    }

    #[test]
    fn in_place_versions_share_a_buffer_and_keep_extends_life() {
        let mut g = Graph::default();
        let h = g.tensor("h", 8);
        let y = g.tensor("y", 8);
        let h2 = g.in_place(h, "h'");
        let z = g.tensor("z", 8);
        g.node("def", op(), &[], &[h]);
        g.node("read", op(), &[h], &[y]);
        g.node("acc", op(), &[y, h], &[h2]);
        g.node("z", op(), &[h2], &[z]);
        let p = Plan::new(&g).unwrap();
        assert_eq!(p.slot[h], p.slot[h2]);
        assert_ne!(p.slot[z], p.slot[h]);
        g.keep(y);
        let p = Plan::new(&g).unwrap();
        assert!([p.slot[h], p.slot[z]].iter().all(|s| *s != p.slot[y]));
        let mut g = Graph::default();
        let a = g.tensor("a", 4);
        let b = g.tensor("b", 4);
        g.node("uses_a", op(), &[a], &[b]);
        assert!(Plan::new(&g).unwrap_err().to_string().contains("before any node writes"));
    }
}
