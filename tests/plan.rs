//! The buffer plan of the Zhinao forward (`Plan::new(&zhinao::build(..))`, shape-only, no GPU):
//! today's node and buffer counts of the decode step and a prefill chunk are pinned, so a
//! planner regression (more buffers, more bytes) or an unintended graph change fails here. When a
//! fusion deliberately changes the graph, update the numbers (and ARCHITECTURE.md's table).
//! Independently of the counts, no two pooled tensors that share a buffer may be live at once.

use zhinao::graph::{Graph, Plan, Storage};
use zhinao::loader::ZhinaoConfig;
use zhinao::models::zhinao::{build, Logits, Mode};

/// The published 360Zhinao-7B shape.
const SEVEN_B: &str = r#"{"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 158464,
    "max_position_embeddings": 4096}"#;

fn tiny() -> ZhinaoConfig {
    ZhinaoConfig::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao")).unwrap()
}

/// (nodes, pooled tensors, storages, buffers, planned bytes) of a graph's plan.
fn counts(g: &Graph) -> (usize, usize, usize, usize, u64) {
    let plan = Plan::new(g).unwrap();
    no_overlap(g, &plan);
    let s = plan.stats(g);
    (g.nodes.len(), s.tensors, s.storages, s.buffers, s.planned_bytes)
}

/// Every slot's tensors have disjoint live ranges [first write, last use] in the plan's order,
/// and each fits its slot.
fn no_overlap(g: &Graph, plan: &Plan) {
    let n = g.tensors.len();
    let (mut first, mut last) = (vec![usize::MAX; n], vec![0usize; n]);
    for (step, &i) in plan.order.iter().enumerate() {
        for &t in g.nodes[i].inputs.iter().chain(&g.nodes[i].outputs) {
            let r = g.root(t);
            first[r] = first[r].min(step);
            last[r] = last[r].max(step);
        }
    }
    let roots: Vec<usize> =
        (0..n).filter(|&r| g.tensors[r].storage == Storage::Pooled && plan.slot[r].is_some()).collect();
    for &a in &roots {
        assert!(g.tensors[a].bytes <= plan.slot_bytes[plan.slot[a].unwrap()], "{} exceeds its slot", g.tensors[a].name);
        for &b in roots.iter().filter(|&&b| b > a && plan.slot[b] == plan.slot[a]) {
            let disjoint = last[a] < first[b] || last[b] < first[a];
            assert!(
                disjoint,
                "'{}' and '{}' share slot {:?} while both live",
                g.tensors[a].name, g.tensors[b].name, plan.slot[a]
            );
        }
    }
}

#[test]
fn decode_plan_counts_are_pinned() {
    // 6 nodes per layer (GEMV norm+qkv+bias, RoPE+KV write, attention, GEMV o_proj+residual,
    // GEMV norm+gate_up+SiLU·mul, GEMV down_proj+residual) + embedding and the lm_head GEMV with the
    // final norm; 4 buffers at any depth. No argmax: the session's sampler reads the logits.
    let g = build(&tiny(), 128, 64, 1, Mode::Decode).unwrap();
    assert_eq!(counts(&g), (14, 15, 9, 4, 3616), "tiny decode: (nodes, tensors, storages, buffers, bytes)");
    let seven = ZhinaoConfig::from_json(SEVEN_B).unwrap();
    let g = build(&seven, 4096, 64, 1, Mode::Decode).unwrap();
    // Bytes: the largest slot is decode attention's split scratch [H, n_split, D + 2] (64 splits at 4K).
    assert_eq!(counts(&g), (194, 225, 129, 4, 1_146_880), "7B decode: (nodes, tensors, storages, buffers, bytes)");
}

#[test]
fn prefill_plan_counts_are_pinned() {
    let seven = ZhinaoConfig::from_json(SEVEN_B).unwrap();
    for logits in [Logits::Last, Logits::All] {
        let g = build(&tiny(), 128, 64, 64, Mode::Prefill(logits)).unwrap();
        assert_eq!(counts(&g), (21, 20, 14, 3, 303_104), "tiny prefill T = 64 {logits:?}");
        let g = build(&seven, 4096, 64, 64, Mode::Prefill(logits)).unwrap();
        assert_eq!(counts(&g), (291, 290, 194, 3, 9_502_720), "7B prefill T = 64 {logits:?}");
    }
}
