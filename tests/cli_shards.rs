//! `zhinao embed` and `zhinao rerank --pairs` over sharded JSONL: several inputs or a glob give one
//! output file per shard (in input-line order, equal to running each shard alone), `--shard I/N`
//! takes every N-th shard, and mistakes (stdin among shards, a file as the output directory, two
//! shards with one name, a glob matching nothing) are refused with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn zhinao(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zhinao")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zhinao-shards-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SHARDS: [&[&str]; 3] = [
    &["北京是中国的首都", "the weather is nice"],
    &["GPU 推理", "", "a longer line of text with several words"],
    &["最后一个分片"],
];

fn write_shards(d: &Path) -> Vec<PathBuf> {
    SHARDS
        .iter()
        .enumerate()
        .map(|(k, lines)| {
            let p = d.join(format!("part-{k}.jsonl"));
            let body: String = lines.iter().map(|t| format!("{}\n", serde_json::json!({ "text": t }))).collect();
            std::fs::write(&p, body).unwrap();
            p
        })
        .collect()
}

#[test]
fn embed_shards_equal_each_shard_alone() {
    let d = scratch("embed");
    let parts = write_shards(&d);
    let out = d.join("out");
    let glob = d.join("part-*.jsonl");
    ok(zhinao(&["embed", "--model", "assets/tiny-bert", "--input", s(&glob), "--output", s(&out)]));
    for (k, p) in parts.iter().enumerate() {
        let alone = ok(zhinao(&["embed", "--model", "assets/tiny-bert", "--input", s(p), "--output", "-"]));
        let sharded = std::fs::read_to_string(out.join(format!("part-{k}.jsonl"))).unwrap();
        assert_eq!(sharded, alone, "shard {k}");
        assert_eq!(sharded.lines().count(), SHARDS[k].len());
    }
    // Several --input values (as a shell glob expands) and --shard 1/2: only shard 1.
    let out2 = d.join("out2");
    ok(zhinao(&[
        "embed",
        "--model",
        "assets/tiny-bert",
        "--input",
        s(&parts[0]),
        s(&parts[1]),
        s(&parts[2]),
        "--output",
        s(&out2),
        "--shard",
        "1/2",
    ]));
    let names: Vec<String> =
        std::fs::read_dir(&out2).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["part-1.jsonl".to_string()]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn shard_mistakes_are_refused() {
    let d = scratch("bad");
    let parts = write_shards(&d);
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let other = d.join("sub");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&parts[0], other.join("part-0.jsonl")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", s(&parts[0]), "-", "--output", s(&d)], "stdin"),
        (vec!["--input", s(&parts[0]), s(&parts[1]), "--output", s(&file)], "directory"),
        (vec!["--input", s(&parts[0]), "sub/part-0.jsonl", "--output", "out"], "distinct file names"),
        (vec!["--input", "nowhere/none-*.jsonl", "--output", s(&d)], "reading"),
        (vec!["--input", s(&parts[0]), "--output", "-", "--shard", "2/2"], "0 <= I < N"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["embed", "--model", concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-bert")];
        args.extend(&extra);
        let o = Command::new(env!("CARGO_BIN_EXE_zhinao")).current_dir(&d).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{extra:?}: {err}");
    }
    let o =
        zhinao(&["embed", "--model", "assets/tiny-bert", "--input", s(&d.join("nomatch-*.jsonl")), "--output", s(&d)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no file matches"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn rerank_pairs_equal_query_docs() {
    let d = scratch("pairs");
    let docs = ["北京是中国的首都。", "今天天气很好。", ""];
    let query = "中国的首都是哪里？";
    let docs_path = d.join("docs.txt");
    std::fs::write(&docs_path, docs.join("\n") + "\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(zhinao(&[
        "rerank",
        "--model",
        "assets/tiny-reranker",
        "--query",
        query,
        "--docs",
        s(&docs_path),
        "--json",
    ])))
    .unwrap();
    let mut want = [0f64; 3];
    for r in v["results"].as_array().unwrap() {
        want[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap();
    }
    // Two shards of pairs: [doc0, doc1] and [doc2].
    for (k, ix) in [vec![0, 1], vec![2]].iter().enumerate() {
        let body: String =
            ix.iter().map(|&i| format!("{}\n", serde_json::json!({ "query": query, "text": docs[i] }))).collect();
        std::fs::write(d.join(format!("pairs-{k}.jsonl")), body).unwrap();
    }
    let out = d.join("scores");
    ok(zhinao(&[
        "rerank",
        "--model",
        "assets/tiny-reranker",
        "--pairs",
        s(&d.join("pairs-*.jsonl")),
        "--output",
        s(&out),
    ]));
    for (k, ix) in [vec![0usize, 1], vec![2]].iter().enumerate() {
        let text = std::fs::read_to_string(out.join(format!("pairs-{k}.jsonl"))).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), ix.len());
        for (j, (row, &i)) in rows.iter().zip(ix).enumerate() {
            assert_eq!(row["index"].as_u64(), Some(j as u64));
            assert!((row["score"].as_f64().unwrap() - want[i]).abs() < 1e-6, "pair {i}: {row} vs {}", want[i]);
        }
    }
    let o = zhinao(&["rerank", "--model", "assets/tiny-reranker", "--pairs", s(&docs_path)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a JSON object"));
    std::fs::remove_dir_all(&d).ok();
}
