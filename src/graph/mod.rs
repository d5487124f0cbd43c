//! The forward pass as data: a graph of nodes (ops with their non-tensor arguments) over virtual
//! activation tensors. Ordering lives here (Kahn's algorithm); buffer planning by liveness and
//! recording into one submission live in [`plan`]. Reference: ratchet's `executable.rs` and
//! ggml's `ggml_cgraph` (a graph is plain arrays of nodes and tensors).
//!
//! In-place updates are explicit versions: `g.in_place(h, ..)` makes a new tensor that shares the
//! storage of `h`; the node that writes it lists `h` as an input and the new version as an output.
//! Versions keep the order recoverable from a shuffled node list: every reader of `h` must run
//! before the node that overwrites it (a write-after-read edge), and readers of the new version
//! after it (the ordinary def-use edge).
//!
//! Nothing here touches the GPU: a graph and its plan are shape-only, so the 7B plan can be
//! computed (and its stats printed) without weights or a device.

pub mod plan;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::tensor::{Linear, Weight};

pub use plan::{Arena, ExeCache, Executable, Plan, PlanStats};

pub type TensorId = usize;
pub type NodeId = usize;

/// Where a tensor's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A buffer assigned by the planner (shared with tensors whose lifetimes do not overlap).
    Pooled,
    /// A buffer the caller binds by name (KV caches, token ids, logits); never pooled.
    External,
    /// A new version of another tensor, updated in place (same bytes, same buffer).
    InPlace(TensorId),
}

#[derive(Clone, Debug)]
pub struct TensorDesc {
    pub name: String,
    pub bytes: u64,
    pub storage: Storage,
    /// Keep the buffer alive to the end of the pass (debug readback of a pooled tensor).
    pub keep: bool,
}

/// A model weight by name (`layer: None` for the embedding, final norm, lm_head, inv_freq):
/// the executor asks a [`Weights`] source for it when recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightRef {
    pub layer: Option<usize>,
    pub name: &'static str,
}

impl WeightRef {
    /// A weight of layer `l`.
    pub fn layer(l: usize, name: &'static str) -> WeightRef {
        WeightRef { layer: Some(l), name }
    }
    /// A weight outside the layers (embedding, final norm, heads).
    pub fn global(name: &'static str) -> WeightRef {
        WeightRef { layer: None, name }
    }
}

/// Where the executor finds a model's weights (the model resolves `WeightRef`s by name).
pub trait Weights {
    fn linear(&self, w: &WeightRef) -> Result<&Linear>;
    /// A dense [rows, cols] table (embedding, lm_head).
    fn table(&self, w: &WeightRef) -> Result<&Weight>;
    /// An f32 vector (norm weights, biases, RoPE inverse frequencies).
    fn vector(&self, w: &WeightRef) -> Result<&GpuBuffer>;
}

/// The buffers bound to one node's tensors, in the order of its `inputs` and `outputs`.
pub struct Bound<'a> {
    pub node: &'a str,
    pub inputs: Vec<&'a GpuBuffer>,
    pub outputs: Vec<&'a GpuBuffer>,
}

impl<'a> Bound<'a> {
    pub fn input(&self, k: usize) -> Result<&'a GpuBuffer> {
        self.inputs.get(k).copied().ok_or_else(|| graph_err(format!("node '{}' has no input {k}", self.node)))
    }
    pub fn output(&self, k: usize) -> Result<&'a GpuBuffer> {
        self.outputs.get(k).copied().ok_or_else(|| graph_err(format!("node '{}' has no output {k}", self.node)))
    }
}

/// What a graph node computes. Ops live in `ops/` beside their kernels: an op chooses its kernel
/// and knows its own per-step parameters, so the executor records and replays any op alike.
/// Tensor arguments are the node's `inputs` / `outputs` (each op documents their order and shapes).
pub trait Op: std::fmt::Debug + Send + Sync {
    /// Record the op's dispatches over its bound buffers.
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>>;
    /// Whether the op's parameters depend on the position of the pass (see [`Op::set_pos`]).
    fn uses_pos(&self) -> bool {
        false
    }
    /// Rewrite this op's recorded dispatches `ds` for a pass whose first token sits at `pos0`.
    fn set_pos(&self, _ctx: &Context, _ds: &[Dispatch], _pos0: usize) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub op: Arc<dyn Op>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub nodes: Vec<Node>,
}

impl Graph {
    fn add(&mut self, name: &str, bytes: u64, storage: Storage) -> TensorId {
        self.tensors.push(TensorDesc { name: name.to_string(), bytes, storage, keep: false });
        self.tensors.len() - 1
    }
    /// A pooled activation of `bytes`.
    pub fn tensor(&mut self, name: &str, bytes: u64) -> TensorId {
        self.add(name, bytes, Storage::Pooled)
    }
    /// A caller-owned buffer, bound by `name` when recording.
    pub fn external(&mut self, name: &str, bytes: u64) -> TensorId {
        self.add(name, bytes, Storage::External)
    }
    /// A new version of `of`, written in place by the node that takes `of` as an input.
    pub fn in_place(&mut self, of: TensorId, name: &str) -> TensorId {
        let bytes = self.tensors.get(of).map_or(0, |t| t.bytes);
        self.add(name, bytes, Storage::InPlace(of))
    }
    /// Keep a tensor's buffer alive to the end of the pass so it can be read back.
    pub fn keep(&mut self, id: TensorId) {
        if let Some(t) = self.tensors.get_mut(id) {
            t.keep = true;
        }
    }
    pub fn node(
        &mut self,
        name: impl Into<String>,
        op: impl Op + 'static,
        inputs: &[TensorId],
        outputs: &[TensorId],
    ) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            op: Arc::new(op),
        });
        self.nodes.len() - 1
    }
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors.iter().position(|t| t.name == name)
    }
    /// The tensor that owns `id`'s storage (follows in-place versions back to the first).
    pub fn root(&self, mut id: TensorId) -> TensorId {
        for _ in 0..self.tensors.len() {
            match self.tensors[id].storage {
                Storage::InPlace(of) => id = of,
                _ => break,
            }
        }
        id
    }

    fn check(&self) -> Result<()> {
        let n = self.tensors.len();
        for node in &self.nodes {
            if let Some(&bad) = node.inputs.iter().chain(&node.outputs).find(|&&t| t >= n) {
                return Err(graph_err(format!("node '{}' names tensor {bad} of {n}", node.name)));
            }
            for &o in &node.outputs {
                if let Storage::InPlace(of) = self.tensors[o].storage {
                    if !node.inputs.contains(&of) {
                        let (a, b) = (&self.tensors[o].name, &self.tensors[of].name);
                        return Err(graph_err(format!(
                            "node '{}' writes '{a}' in place of '{b}' without reading it",
                            node.name
                        )));
                    }
                }
            }
        }
        for (i, t) in self.tensors.iter().enumerate() {
            match t.storage {
                Storage::InPlace(of) if of >= i => {
                    return Err(graph_err(format!("'{}' is a version of a later tensor", t.name)))
                }
                _ if t.bytes == 0 => return Err(graph_err(format!("tensor '{}' has no bytes", t.name))),
                _ => {}
            }
        }
        Ok(())
    }

    /// Node ids in an order where every tensor is written before it is read and every in-place
    /// overwrite follows all readers of the version it replaces (Kahn; ties by node id).
    pub fn order(&self) -> Result<Vec<NodeId>> {
        self.check()?;
        let mut producer: Vec<Option<NodeId>> = vec![None; self.tensors.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &o in &node.outputs {
                if let Some(p) = producer[o].replace(i) {
                    let name = &self.tensors[o].name;
                    return Err(graph_err(format!(
                        "'{name}' written by both '{}' and '{}' (use in_place for a new version)",
                        self.nodes[p].name, node.name
                    )));
                }
            }
        }
        let mut overwriter: Vec<Option<NodeId>> = vec![None; self.tensors.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &o in &node.outputs {
                if let Storage::InPlace(of) = self.tensors[o].storage {
                    if overwriter[of].replace(i).is_some() {
                        return Err(graph_err(format!("'{}' is updated in place twice", self.tensors[of].name)));
                    }
                }
            }
        }
        // succ[a] holds b for every edge a -> b (a must run first).
        let mut succ: Vec<Vec<NodeId>> = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &t in &node.inputs {
                if let Some(p) = producer[t].filter(|&p| p != i) {
                    succ[p].push(i);
                }
                if let Some(w) = overwriter[t].filter(|&w| w != i) {
                    succ[i].push(w);
                }
            }
        }
        let mut indeg = vec![0usize; self.nodes.len()];
        for s in succ.iter().flatten() {
            indeg[*s] += 1;
        }
        let mut ready: BinaryHeap<Reverse<NodeId>> =
            (0..self.nodes.len()).filter(|&i| indeg[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &s in &succ[i] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.push(Reverse(s));
                }
            }
        }
        if order.len() < self.nodes.len() {
            return Err(graph_err(format!("cycle: {}", self.cycle(&succ, &indeg).join(" -> "))));
        }
        Ok(order)
    }

    /// Names of a cycle among the nodes Kahn could not order (each has an unordered predecessor).
    fn cycle(&self, succ: &[Vec<NodeId>], indeg: &[usize]) -> Vec<String> {
        let stuck = |i: NodeId| indeg[i] > 0;
        let mut pred: Vec<Option<NodeId>> = vec![None; self.nodes.len()];
        for (a, ss) in succ.iter().enumerate() {
            for &b in ss {
                if stuck(a) && stuck(b) {
                    pred[b] = Some(a);
                }
            }
        }
        let Some(mut at) = (0..self.nodes.len()).find(|&i| stuck(i)) else { return vec![] };
        let mut path = Vec::new();
        while let Some(p) = pred[at] {
            if let Some(k) = path.iter().position(|&x| x == at) {
                let mut cyc: Vec<String> =
                    path[k..].iter().rev().map(|&i: &NodeId| self.nodes[i].name.clone()).collect();
                cyc.push(cyc[0].clone());
                return cyc;
            }
            path.push(at);
            at = p;
        }
        vec![self.nodes[at].name.clone()]
    }
}

fn graph_err(msg: String) -> Error {
    Error::shape("graph", msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An op that records nothing (ordering and planning tests need no GPU).
    #[derive(Debug)]
    pub struct Nop;
    impl Op for Nop {
        fn record(&self, _: &Context, _: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
            Ok(Vec::new())
        }
    }

    fn silu(_t: usize) -> Nop {
        Nop
    }

    #[test]
    fn shuffled_nodes_are_ordered_by_data() {
        // a -> b -> (c in place of b, after b's other reader r) -> d
        let mut g = Graph::default();
        let a = g.external("a", 8);
        let b = g.tensor("b", 8);
        let r = g.tensor("r", 8);
        let c = g.in_place(b, "b'");
        let d = g.tensor("d", 8);
        g.node("make_b", silu(1), &[a], &[b]);
        g.node("read_b", silu(1), &[b], &[r]);
        g.node("update_b", silu(1), &[b, r], &[c]);
        g.node("make_d", silu(1), &[c], &[d]);
        for perm in [[3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]] {
            let mut s = g.clone();
            s.nodes = perm.iter().map(|&i| g.nodes[i].clone()).collect();
            let names: Vec<_> = s.order().unwrap().iter().map(|&i| s.nodes[i].name.clone()).collect();
            assert_eq!(names, ["make_b", "read_b", "update_b", "make_d"], "{perm:?}");
        }
        // A reader of the old version that does not feed the update still runs before it.
        let mut g2 = Graph::default();
        let x = g2.tensor("x", 4);
        let x2 = g2.in_place(x, "x'");
        let y = g2.tensor("y", 4);
        g2.node("update", silu(1), &[x], &[x2]);
        g2.node("read_old", silu(1), &[x], &[y]);
        g2.node("def", silu(1), &[], &[x]);
        let names: Vec<_> = g2.order().unwrap().iter().map(|&i| g2.nodes[i].name.clone()).collect();
        assert_eq!(names, ["def", "read_old", "update"]);
    }

    #[test]
    fn a_cycle_is_an_error_naming_it() {
        let mut g = Graph::default();
        let (x, y, z) = (g.tensor("x", 4), g.tensor("y", 4), g.tensor("z", 4));
        g.node("start", silu(1), &[], &[z]);
        g.node("f", silu(1), &[y, z], &[x]);
        g.node("g", silu(1), &[x], &[y]);
        let err = g.order().unwrap_err().to_string();
        assert!(err.contains("cycle") && err.contains("f") && err.contains("g") && !err.contains("start"), "{err}");
        let mut g = Graph::default();
        let x = g.tensor("x", 4);
        g.node("one", silu(1), &[], &[x]);
        g.node("two", silu(1), &[], &[x]);
        assert!(g.order().unwrap_err().to_string().contains("written by both"));
    }
}
