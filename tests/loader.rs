//! Integration tests of `zhinao::loader`: checkpoints are written to temp directories (safetensors
//! with the `safetensors` crate; `torch.save` zips built by hand with a tiny pickle writer).

use safetensors::tensor::{serialize_to_file, Dtype, TensorView as StView};
use std::path::{Path, PathBuf};
use zhinao::error::Error;
use zhinao::loader::config::Pooling;
use zhinao::loader::{
    BertConfig, GenerationConfig, PoolingConfig, QuantizeConfig, VarBuilder, WeightFiles, ZhinaoConfig,
};
use zhinao::tensor::DType;

mod common;
use common::{bf16s, f16s, f32s, i32s, temp_dir};

// ---- helpers -------------------------------------------------------------------------------

/// Test tensors: (name, dtype, shape, bytes).
type T = (&'static str, Dtype, Vec<usize>, Vec<u8>);

fn write_st(path: &Path, tensors: &[T]) {
    let views: Vec<(&str, StView)> =
        tensors.iter().map(|(n, d, s, b)| (*n, StView::new(*d, s.clone(), b).unwrap())).collect();
    serialize_to_file(views, None, path).unwrap();
}

fn shard_a() -> Vec<T> {
    vec![
        ("model.embed_tokens.weight", Dtype::BF16, vec![4, 2], bf16s(&[1., 2., 3., 4., 5., 6., 7., 8.])),
        ("model.layers.0.self_attn.qkv_proj.weight", Dtype::F16, vec![6, 2], f16s(&[0.5; 12])),
        ("model.layers.0.self_attn.qkv_proj.bias", Dtype::F32, vec![6], f32s(&[0., 1., 2., 3., 4., 5.])),
    ]
}
fn shard_b() -> Vec<T> {
    vec![
        ("model.layers.0.mlp.gate_proj.qweight", Dtype::I32, vec![1, 3], i32s(&[-1, 7, 0x7777_7777])),
        ("model.norm.weight", Dtype::F32, vec![2], f32s(&[1.0, -1.0])),
        ("model.rotary_emb.inv_freq", Dtype::I64, vec![2], vec![0u8; 16]),
    ]
}

/// A 2-shard checkpoint with its index.
fn sharded_dir() -> PathBuf {
    let dir = temp_dir("sharded");
    write_st(&dir.join("model-00001-of-00002.safetensors"), &shard_a());
    write_st(&dir.join("model-00002-of-00002.safetensors"), &shard_b());
    let mut map = serde_json::Map::new();
    for (n, ..) in shard_a() {
        map.insert(n.into(), "model-00001-of-00002.safetensors".into());
    }
    for (n, ..) in shard_b() {
        map.insert(n.into(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

fn msg(e: Error) -> String {
    e.to_string()
}

// ---- safetensors -----------------------------------------------------------------------------

#[test]
fn sharded_checkpoint_round_trips() {
    let dir = sharded_dir();
    let wf = WeightFiles::open(&dir).unwrap();
    let mut all = shard_a();
    all.extend(shard_b());
    let mut names: Vec<&str> = all.iter().map(|t| t.0).collect();
    names.sort();
    assert_eq!(wf.names().collect::<Vec<_>>(), names);
    assert_eq!(wf.files().count(), 2);
    assert_eq!(wf.total_bytes(), all.iter().map(|t| t.3.len()).sum::<usize>());
    for (name, dtype, shape, bytes) in &all {
        assert!(wf.contains(name));
        if *dtype == Dtype::I64 {
            continue;
        }
        let t = wf.get(name).unwrap();
        assert_eq!(t.name, *name);
        assert_eq!(&t.shape, shape);
        assert_eq!(t.data, &bytes[..]);
        let want = match dtype {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F32 => DType::F32,
            _ => DType::I32,
        };
        assert_eq!(t.dtype, want);
    }
    let emb = wf.get("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.to_f32_vec().unwrap(), [1., 2., 3., 4., 5., 6., 7., 8.]);
    assert!(emb.file.ends_with("model-00001-of-00002.safetensors"));
    let q = wf.get("model.layers.0.mlp.gate_proj.qweight").unwrap();
    assert_eq!(q.to_i32_vec().unwrap(), [-1, 7, 0x7777_7777]);
    assert!(q.file.ends_with("model-00002-of-00002.safetensors"));
}

#[test]
fn var_builder_paths_and_shapes() {
    let wf = WeightFiles::open(&sharded_dir()).unwrap();
    let vb = VarBuilder::new(&wf).pp("model");
    let attn = vb.pp("layers").pp(0).pp("self_attn").pp("qkv_proj");
    assert_eq!(attn.prefix(), "model.layers.0.self_attn.qkv_proj");
    assert_eq!(attn.get(&[6, 2], "weight").unwrap().dtype, DType::F16);
    assert_eq!(attn.get_opt(&[6], "bias").unwrap().unwrap().to_f32_vec().unwrap(), [0., 1., 2., 3., 4., 5.]);
    assert!(vb.pp("layers").pp(0).pp("self_attn").pp("o_proj").get_opt(&[2], "bias").unwrap().is_none());
    assert_eq!(vb.get_any_shape("norm.weight").unwrap().shape, [2]);
    let qw = vb.pp("layers.0.mlp.gate_proj");
    assert!(qw.get_with_dtype(&[1, 3], DType::I32, "qweight").is_ok());
    let e = msg(qw.get_with_dtype(&[1, 3], DType::F16, "qweight").unwrap_err());
    assert!(e.contains("model.layers.0.mlp.gate_proj.qweight") && e.contains("expected f16"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_shapes_and_file() {
    let wf = WeightFiles::open(&sharded_dir()).unwrap();
    let vb = VarBuilder::new(&wf);
    let err = vb.pp("model").pp("embed_tokens").get(&[4, 3], "weight").unwrap_err();
    assert!(matches!(err, Error::TensorShape { .. }));
    let e = msg(err);
    for part in ["model.embed_tokens.weight", "[4, 3]", "[4, 2]", "model-00001-of-00002.safetensors"] {
        assert!(e.contains(part), "'{part}' not in: {e}");
    }
    // get_opt still checks the shape of a present tensor.
    assert!(vb.pp("model.norm").get_opt(&[3], "weight").is_err());
}

#[test]
fn missing_tensor_names_the_files() {
    let wf = WeightFiles::open(&sharded_dir()).unwrap();
    let err = VarBuilder::new(&wf).pp("lm_head").get(&[4, 2], "weight").unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }));
    let e = msg(err);
    assert!(e.contains("lm_head.weight") && e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn unsupported_dtype_is_reported_by_get_not_open() {
    let wf = WeightFiles::open(&sharded_dir()).unwrap();
    let err = wf.get("model.rotary_emb.inv_freq").unwrap_err();
    assert!(matches!(err, Error::TensorDtype { .. }), "{err}");
    assert!(msg(err).contains("i64"));
    assert_eq!(wf.shape("model.rotary_emb.inv_freq"), Some(&[2usize][..]));
}

#[test]
fn truncated_shard_is_refused() {
    let dir = sharded_dir();
    let p = dir.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let e = msg(WeightFiles::open(&dir).expect_err("truncated shard must fail"));
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    // Truncated inside the 8-byte length and inside the header, too.
    for cut in [3, 20] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(matches!(WeightFiles::open(&dir), Err(Error::BadFile { .. })));
    }
}

#[test]
fn header_offsets_past_the_file_are_refused() {
    let header = br#"{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    let dir = temp_dir("offsets");
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    assert!(matches!(WeightFiles::open(&dir), Err(Error::BadFile { .. })));
    // A header length larger than the file.
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    assert!(matches!(WeightFiles::open(&dir), Err(Error::BadFile { .. })));
}

#[test]
fn index_naming_a_missing_shard_is_refused() {
    let dir = sharded_dir();
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = msg(WeightFiles::open(&dir).err().unwrap());
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("missing"), "{e}");
}

#[test]
fn index_shard_names_must_be_plain_file_names() {
    // A shard outside the model directory (a valid one: only the name is wrong), named relatively,
    // absolutely, or through a subdirectory: refused before it is opened.
    let outer = temp_dir("shard-escape");
    let dir = outer.join("model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    write_st(&outer.join("outside.safetensors"), &shard_a());
    write_st(&dir.join("sub").join("inner.safetensors"), &shard_a());
    let outside = outer.join("outside.safetensors");
    for shard in [
        "../outside.safetensors",
        outside.to_str().unwrap(),
        "sub/inner.safetensors",
        "sub/../../outside.safetensors",
        ".",
        "",
    ] {
        let index = serde_json::json!({ "weight_map": { "model.embed_tokens.weight": shard } });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = WeightFiles::open(&dir).err().unwrap_or_else(|| panic!("{shard}: opened"));
        assert!(matches!(err, Error::BadFile { .. }), "{shard}: {err}");
        let e = msg(err);
        assert!(e.contains("not a plain file name in the model directory"), "{shard}: {e}");
    }
}

#[test]
fn index_disagreeing_with_shards_is_refused() {
    let dir = sharded_dir();
    let index = serde_json::json!({ "weight_map": {
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    }});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = msg(WeightFiles::open(&dir).err().unwrap());
    assert!(e.contains("model.norm.weight"), "{e}");
}

#[test]
fn single_files_any_name() {
    let dir = temp_dir("single");
    write_st(&dir.join("gptq_model-4bit-128g.safetensors"), &shard_b());
    let wf = WeightFiles::open(&dir).unwrap(); // the only .safetensors in the directory
    assert!(wf.contains("model.norm.weight"));
    let wf = WeightFiles::open_file(&dir.join("gptq_model-4bit-128g.safetensors")).unwrap();
    assert_eq!(wf.get("model.norm.weight").unwrap().to_f32_vec().unwrap(), [1.0, -1.0]);
    // model.safetensors is preferred over other names.
    write_st(&dir.join("model.safetensors"), &shard_a());
    assert!(WeightFiles::open(&dir).unwrap().contains("model.embed_tokens.weight"));
    // In memory.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let wf = WeightFiles::from_bytes("mem", bytes).unwrap();
    assert_eq!(wf.get("model.embed_tokens.weight").unwrap().shape, [4, 2]);
    // Nothing to load.
    assert!(WeightFiles::open(&temp_dir("empty")).is_err());
}

// ---- configs ---------------------------------------------------------------------------------

const CHAT_7B: &str = r#"{
  "architectures": ["ZhinaoForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
  "vocab_size": 158464, "rms_norm_eps": 1e-05, "rope_theta": 50000000.0,
  "max_position_embeddings": 32768, "model_max_length": 32768, "rope_scaling": null,
  "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "bfloat16", "use_flash_attn": "auto"
}"#;

fn with(base: &str, key: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    v[key] = value;
    v.to_string()
}

#[test]
fn zhinao_config_loads_and_validates() {
    let dir = temp_dir("cfg");
    std::fs::write(dir.join("config.json"), CHAT_7B).unwrap();
    let c = ZhinaoConfig::load(&dir).unwrap();
    assert_eq!((c.head_dim(), c.num_kv_heads(), c.context_length()), (128, 32, 32768));
    assert!(c.quantization_config.is_none());
    // num_key_value_heads absent → MHA.
    let mut v: serde_json::Value = serde_json::from_str(CHAT_7B).unwrap();
    v.as_object_mut().unwrap().remove("num_key_value_heads");
    assert_eq!(ZhinaoConfig::from_json(&v.to_string()).unwrap().num_kv_heads(), 32);

    let bad = |k: &str, val: serde_json::Value| ZhinaoConfig::from_json(&with(CHAT_7B, k, val)).unwrap_err();
    let e = bad("num_attention_heads", 30.into());
    assert!(matches!(e, Error::Config(_)) && msg(e).contains("does not divide hidden_size"));
    let e = bad("num_key_value_heads", 5.into());
    assert!(matches!(e, Error::Config(_)) && msg(e).contains("num_key_value_heads 5"));
    assert!(matches!(bad("num_hidden_layers", 0.into()), Error::Config(_)));
    let e = bad("rope_scaling", serde_json::json!({"type": "linear", "factor": 2.0}));
    assert!(matches!(e, Error::Unsupported(_)) && msg(e).contains("linear"));
    assert!(matches!(bad("hidden_size", "big".into()), Error::Config(_)));
    let e = ZhinaoConfig::load(&temp_dir("nocfg")).unwrap_err();
    assert!(matches!(e, Error::ModelDir { .. }) && msg(e).contains("no config.json"));
}

#[test]
fn quantize_config_refusals() {
    let q = |json: &str| serde_json::from_str::<QuantizeConfig>(json).unwrap();
    let ok = q(r#"{"bits":4,"group_size":128,"desc_act":false,"sym":true,"true_sequential":true,
                  "quant_method":"gptq","checkpoint_format":"gptq","model_file_base_name":"gptq_model-4bit-128g"}"#);
    ok.validate().unwrap();
    assert_eq!(ok.model_file_name().as_deref(), Some("gptq_model-4bit-128g.safetensors"));
    let defaults = q(r#"{"bits":4,"group_size":128}"#);
    assert_eq!((defaults.checkpoint_format.as_str(), defaults.sym), ("gptq", true));
    defaults.validate().unwrap();
    for (json, needle) in [
        (r#"{"bits":8,"group_size":128}"#, "bits 8"),
        (r#"{"bits":4,"group_size":128,"checkpoint_format":"marlin"}"#, "marlin"),
        (r#"{"bits":4,"group_size":128,"checkpoint_format":"gptq_v2"}"#, "gptq_v2"),
        (r#"{"bits":4,"group_size":128,"quant_method":"awq"}"#, "awq"),
        (r#"{"bits":4,"group_size":-1}"#, "group_size -1"),
    ] {
        let e = q(json).validate().unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{json}");
        assert!(msg(e).contains(needle), "{json}");
    }
    // Through config.json's quantization_config and through quantize_config.json.
    let dir = temp_dir("qcfg");
    let cfg = with(CHAT_7B, "quantization_config", serde_json::json!({"bits": 8, "group_size": 128}));
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    assert!(matches!(ZhinaoConfig::load(&dir), Err(Error::Unsupported(_))));
    assert!(matches!(QuantizeConfig::load(&dir), Err(Error::Unsupported(_))));
    std::fs::write(dir.join("config.json"), CHAT_7B).unwrap();
    assert!(QuantizeConfig::load(&dir).unwrap().is_none());
    std::fs::write(dir.join("quantize_config.json"), r#"{"bits":4,"group_size":128,"desc_act":false}"#).unwrap();
    let c = ZhinaoConfig::load(&dir).unwrap();
    assert_eq!(c.quantization_config.unwrap().group_size, 128);
    assert_eq!(QuantizeConfig::load(&dir).unwrap().unwrap().bits, 4);
}

#[test]
fn generation_config_defaults_and_forms() {
    let dir = temp_dir("gen");
    let g = GenerationConfig::load(&dir).unwrap();
    assert_eq!((g.do_sample, g.top_k, g.top_p, g.max_new_tokens), (true, 0, 0.8, 1024));
    assert_eq!(g.eos_token_id, [158326, 158332, 158333]);
    assert_eq!(g.pad_token_id, Some(158326));
    std::fs::write(dir.join("generation_config.json"), r#"{"do_sample":false,"eos_token_id":158326,"top_k":50}"#)
        .unwrap();
    let g = GenerationConfig::load(&dir).unwrap();
    assert_eq!((g.do_sample, g.top_k, g.eos_token_id.clone()), (false, 50, vec![158326]));
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id":"x"}"#).unwrap();
    assert!(matches!(GenerationConfig::load(&dir), Err(Error::Config(_))));
}

#[test]
fn bert_and_pooling_configs() {
    let dir = temp_dir("bert");
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures":["BertModel"],"vocab_size":21128,"hidden_size":1024,"num_hidden_layers":24,
            "num_attention_heads":16,"intermediate_size":4096,"hidden_act":"gelu","max_position_embeddings":512,
            "type_vocab_size":2,"layer_norm_eps":1e-12,"pad_token_id":0}"#,
    )
    .unwrap();
    let b = BertConfig::load(&dir).unwrap();
    assert_eq!((b.head_dim(), b.vocab_size), (64, 21128));
    assert!(PoolingConfig::load(&dir).unwrap().is_none());
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension":1024,"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
    )
    .unwrap();
    assert_eq!(PoolingConfig::load(&dir).unwrap().unwrap().mode().unwrap(), Pooling::Cls);
    let bad: BertConfig = serde_json::from_str(r#"{"hidden_size":1000,"num_attention_heads":16}"#).unwrap();
    assert!(matches!(bad.validate(), Err(Error::Config(_))));
}

/// The tiny checkpoint's JSON files in a fresh directory, with `file`'s `key` set to `value`.
fn tiny_with(file: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao");
    let dir = temp_dir("tiny-cfg");
    for f in ["config.json", "generation_config.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    std::fs::write(dir.join(file), with(&text, key, value)).unwrap();
    dir
}

/// Values that 0.5.0 accepted at load and that fail later (a NaN norm, RoPE angles past the exact
/// range, every request that keeps a default refused) are refused at load, naming file and field.
#[test]
fn config_values_that_fail_later_are_refused_at_load() {
    use serde_json::json;
    for (key, value) in [
        ("rms_norm_eps", json!(1e39)),  // finite f64, infinite f32
        ("rms_norm_eps", json!(1e-50)), // 0 as f32
        ("rope_theta", json!(1e39)),
        ("rope_theta", json!(0.5)), // frequencies above 1 per position
        ("max_position_embeddings", json!(1_000_000)),
        ("max_position_embeddings", json!(zhinao::loader::config::MAX_POSITIONS + 1)),
        ("model_max_length", json!(4_000_000_000u64)),
        ("hidden_size", json!(1024)), // head_dim 512: past the attention kernels' 256
    ] {
        let e = ZhinaoConfig::load(&tiny_with("config.json", key, value.clone())).unwrap_err();
        assert!(matches!(e, Error::Config(_) | Error::Unsupported(_)), "{key} {value}: {e}");
        let m = msg(e);
        assert!(m.contains("config.json") && m.contains(key), "{key} {value}: {m}");
    }
    let at_limit = json!(zhinao::loader::config::MAX_POSITIONS);
    ZhinaoConfig::load(&tiny_with("config.json", "max_position_embeddings", at_limit)).unwrap();

    for (key, value) in [
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1.0)),
        ("repetition_penalty", json!(1e-40)), // 1/r overflows f32
        ("temperature", json!(-0.5)),
        ("temperature", json!(1e-40)), // 1/T overflows f32
        ("top_p", json!(1.5)),
        ("top_p", json!(-0.1)),
        ("max_new_tokens", json!(0)),
    ] {
        let e = GenerationConfig::load(&tiny_with("generation_config.json", key, value.clone())).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{key} {value}: {e}");
        let m = msg(e);
        assert!(m.contains("generation_config.json") && m.contains(key), "{key} {value}: {m}");
    }
    // Greedy, off and boundary values stay loadable.
    for (key, value) in [("temperature", json!(0)), ("top_p", json!(1.0)), ("top_p", json!(0)), ("top_k", json!(1))] {
        GenerationConfig::load(&tiny_with("generation_config.json", key, value)).unwrap();
    }

    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-bert/config.json");
    let dir = temp_dir("bert-eps");
    std::fs::write(
        dir.join("config.json"),
        with(&std::fs::read_to_string(bert).unwrap(), "layer_norm_eps", json!(1e39)),
    )
    .unwrap();
    let m = msg(BertConfig::load(&dir).unwrap_err());
    assert!(m.contains("config.json") && m.contains("layer_norm_eps"), "{m}");
}

// ---- robustness -----------------------------------------------------------------------------

/// Random byte flips and truncations of a valid safetensors file: `Ok` or `Err`, never a panic.
#[test]
fn mutated_safetensors_never_panic() {
    let dir = temp_dir("fuzz");
    write_st(&dir.join("a.safetensors"), &shard_a());
    common::weight_file_mutations_never_panic("x.safetensors", &std::fs::read(dir.join("a.safetensors")).unwrap());
}

/// The JSON files a model directory holds, mutated: random byte flips and truncations of the
/// text, and every field set to edge values (0, negative, huge, 1e39, 1e-50, wrong types). Loading
/// gives `Ok` or `Err`, never a panic, and what loads is usable: a `config.json` gives finite f32
/// norms and RoPE frequencies and positions RoPE handles, a `generation_config.json` gives sampling
/// defaults the sampler accepts, an index names only tensors its shards hold.
#[test]
fn mutated_json_files_never_panic_and_what_loads_is_usable() {
    use serde_json::{json, Value};
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let edge = [
        json!(0),
        json!(-1),
        json!(1),
        json!(0.5),
        json!(1e39),
        json!(-1e39),
        json!(1e-50),
        json!(1e-40),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(zhinao::loader::config::MAX_POSITIONS + 1),
        json!(4_294_967_296u64),
        json!(null),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!([1, -1]),
    ];
    // What loaded must be usable; `which` names the file for the assertion messages.
    let check = |which: &str, dir: &Path| match which {
        "config.json" => {
            if let Ok(c) = ZhinaoConfig::load(dir) {
                let (eps, theta) = (c.rms_norm_eps as f32, c.rope_theta as f32);
                assert!(eps.is_finite() && eps > 0.0, "{c:?}");
                assert!(c.max_position_embeddings <= zhinao::loader::config::MAX_POSITIONS, "{c:?}");
                assert!(c.head_dim() % 2 == 0 && c.hidden_size % c.num_attention_heads == 0, "{c:?}");
                assert!(c.head_dim() <= zhinao::ops::attention::MAX_D, "{c:?}");
                assert!(zhinao::ops::rope::inv_freq(theta, c.head_dim()).iter().all(|f| f.is_finite() && *f <= 1.0));
            }
        }
        "generation_config.json" => {
            if let Ok(g) = GenerationConfig::load(dir) {
                zhinao::sampling::SamplingParams::from_generation_config(&g).check().unwrap();
                assert!(g.max_new_tokens >= 1 && (0.0..=1.0).contains(&g.top_p), "{g:?}");
            }
        }
        _ => {
            if let Ok(wf) = WeightFiles::open(dir) {
                for name in wf.names().map(str::to_string).collect::<Vec<_>>() {
                    if let Ok(t) = wf.get(&name) {
                        let _ = t.to_f32_vec();
                    }
                }
            }
        }
    };
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao");
    let sharded = sharded_dir();
    for (which, good) in [
        ("config.json", std::fs::read_to_string(tiny.join("config.json")).unwrap()),
        ("generation_config.json", std::fs::read_to_string(tiny.join("generation_config.json")).unwrap()),
        (
            "model.safetensors.index.json",
            std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap(),
        ),
    ] {
        let dir = if which.starts_with("model.") { sharded.clone() } else { tiny_with("config.json", "x", json!(0)) };
        let fields: Vec<String> = match serde_json::from_str::<Value>(&good).unwrap() {
            Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        };
        // Every field with every edge value.
        for key in &fields {
            for v in &edge {
                std::fs::write(dir.join(which), with(&good, key, v.clone())).unwrap();
                check(which, &dir);
            }
        }
        // Random byte flips and truncations of the text.
        for round in 0..400 {
            let mut bytes = good.clone().into_bytes();
            if round % 3 == 0 {
                bytes.truncate(rand() as usize % bytes.len());
            } else {
                for _ in 0..1 + rand() % 4 {
                    let at = rand() as usize % bytes.len();
                    let alphabet = b"0123456789-.eE\"{}[],: x";
                    bytes[at] = alphabet[rand() as usize % alphabet.len()];
                }
            }
            std::fs::write(dir.join(which), &bytes).unwrap();
            check(which, &dir);
        }
        std::fs::write(dir.join(which), &good).unwrap();
    }
}

#[test]
fn weight_files_are_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<WeightFiles>();
    let wf = WeightFiles::open(&sharded_dir()).unwrap();
    assert!(format!("{wf:?}").contains("tensors: 6"));
}
