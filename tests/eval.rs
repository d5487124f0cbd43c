//! `zhinao::eval`: the metrics on hand-computed examples, the C-MTEB readers on
//! `assets/eval/`, and both evaluators with tiny fake models whose results can be worked out by
//! hand (CPU only).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use zhinao::eval::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-4
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/eval")
}

#[test]
fn ndcg_hand_example() {
    let qrels: HashMap<String, i64> = [("a", 2), ("b", 1), ("c", 0)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
    // DCG = 2/log2(3) + 1/log2(5) = 1.26186 + 0.43068; IDCG = 2/log2(2) + 1/log2(3) = 2.63093.
    let got = ndcg_at_k(&["c", "a", "x", "b"], &qrels, 10);
    assert!(close(got, 0.64332), "{got}");
    assert!(close(ndcg_at_k(&["a", "b", "c"], &qrels, 10), 1.0));
    // The cutoff: "b" at rank 4 falls outside k = 3. DCG = 2/log2(3); IDCG as above.
    assert!(close(ndcg_at_k(&["c", "a", "x", "b"], &qrels, 3), 0.47962));
    // Nothing relevant judged: 0, as trec_eval.
    let none: HashMap<String, i64> = [("a".to_string(), 0)].into();
    assert_eq!(ndcg_at_k(&["a"], &none, 10), 0.0);
}

#[test]
fn average_precision_hand_examples() {
    // Relevant at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert!(close(average_precision(&[0.9, 0.8, 0.7, 0.6], &[true, false, true, false]), 0.83333));
    // A tie at the top counts as one threshold (sklearn): P = 1/2 at R = 1/2, P = 2/3 at R = 1.
    assert!(close(average_precision(&[0.5, 0.5, 0.1], &[false, true, true]), 0.5 * 0.5 + 0.5 * 2.0 / 3.0));
    assert_eq!(average_precision(&[0.1, 0.2], &[false, false]), 0.0);
    assert!(close(average_precision(&[0.1, 0.2], &[true, true]), 1.0));
}

#[test]
fn reciprocal_rank_hand_examples() {
    assert!(close(reciprocal_rank(&[0.1, 0.9, 0.5], &[true, false, false], 10), 1.0 / 3.0));
    assert_eq!(reciprocal_rank(&[0.1, 0.9, 0.5], &[true, false, false], 2), 0.0);
    assert_eq!(reciprocal_rank(&[0.3, 0.2], &[true, true], 10), 1.0);
}

/// Bag of characters: counts of 'a'..='z' (other characters ignored). Records `is_query`.
struct BagOfChars {
    calls: RefCell<Vec<(usize, bool)>>,
}

impl TextEmbedder for BagOfChars {
    fn embed_texts(&self, texts: &[String], is_query: bool) -> zhinao::Result<Vec<Vec<f32>>> {
        self.calls.borrow_mut().push((texts.len(), is_query));
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; 26];
                for c in t.chars().filter(|c| c.is_ascii_lowercase()) {
                    v[(c as u8 - b'a') as usize] += 1.0;
                }
                v
            })
            .collect())
    }
}

fn doc(id: &str, title: &str, text: &str) -> CorpusDoc {
    serde_json::from_value(serde_json::json!({ "_id": id, "title": title, "text": text })).unwrap()
}

fn query(id: &str, text: &str) -> Query {
    serde_json::from_value(serde_json::json!({ "_id": id, "text": text })).unwrap()
}

#[test]
fn eval_retrieval_with_a_bag_of_characters() {
    // d3 is "a b" (title + text): cosine 1/√2 with both "a" and "b".
    let data = RetrievalData {
        corpus: vec![doc("d1", "", "aaa"), doc("d2", "", "bbb"), doc("d3", "a", "b")],
        queries: vec![query("q1", "a"), query("q2", "b"), query("q3", "ab")],
        qrels: [
            ("q1".to_string(), HashMap::from([("d3".to_string(), 1)])),
            ("q2".to_string(), HashMap::from([("d2".to_string(), 1), ("d1".to_string(), 1)])),
        ]
        .into(),
    };
    let e = BagOfChars { calls: RefCell::new(Vec::new()) };
    let r = eval_retrieval(&e, &data).unwrap();
    // q1 ranks d1, d3, d2: NDCG = (1/log2 3) / 1.
    // q2 ranks d2, d3, d1: DCG = 1 + 1/log2 4 = 1.5, IDCG = 1 + 1/log2 3: 0.91972.
    // q3 has no qrels and is not evaluated.
    assert_eq!(r.evaluated, 2);
    let want = (1.0 / 3f64.log2() + 1.5 / (1.0 + 1.0 / 3f64.log2())) / 2.0;
    assert!(close(r.metrics["ndcg@10"], want), "{:?} vs {want}", r.metrics);
    assert_eq!(*e.calls.borrow(), vec![(3, false), (2, true)]);
}

#[test]
fn readers_on_the_bundled_dataset() {
    let d = RetrievalData::load(&data_dir().join("retrieval")).unwrap();
    assert_eq!((d.corpus.len(), d.queries.len(), d.qrels.len()), (10, 4, 4));
    assert_eq!(d.qrels["q1"]["d1"], 2);
    assert_eq!(d.corpus[4].embed_text(), "今天天气晴朗，最高气温二十五度，适合户外活动。", "empty title: stripped");
    assert_eq!(d.corpus[0].embed_text(), "机器学习 机器学习是人工智能的一个分支，它让计算机从数据中学习规律。");
    let e = BagOfChars { calls: RefCell::new(Vec::new()) };
    let r = eval_retrieval(&e, &d).unwrap();
    assert!((0.0..=1.0).contains(&r.metrics["ndcg@10"]));

    let d = RerankData::load(&data_dir().join("rerank")).unwrap();
    assert_eq!(d.samples.len(), 5);
    assert!(RetrievalData::load(&data_dir().join("missing")).unwrap_err().to_string().contains("corpus.jsonl"));
}

/// Scores looked up from a table; anything else scores 0.
struct Table(HashMap<String, f32>);

impl PairScorer for Table {
    fn score_pairs(&self, _query: &str, passages: &[String]) -> zhinao::Result<Vec<f32>> {
        Ok(passages.iter().map(|p| self.0.get(p).copied().unwrap_or(0.0)).collect())
    }
}

#[test]
fn eval_rerank_with_a_score_table() {
    let sample = |q: &str, pos: &[&str], neg: &[&str]| RerankSample {
        query: q.into(),
        positive: pos.iter().map(|s| s.to_string()).collect(),
        negative: neg.iter().map(|s| s.to_string()).collect(),
    };
    let data = RerankData {
        samples: vec![
            // Ranking p1 n1 p2 n2: AP = (1 + 2/3) / 2, RR = 1.
            sample("q", &["p1", "p2"], &["n1", "n2"]),
            // Ranking n3 p3: AP = 1/2, RR = 1/2.
            sample("q", &["p3"], &["n3"]),
            // No negatives: skipped.
            sample("q", &["p1"], &[]),
        ],
    };
    let table = Table(
        [("p1", 4.0), ("n1", 3.0), ("p2", 2.0), ("n2", 1.0), ("p3", 0.5), ("n3", 0.7)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    );
    let (r, samples) = eval_rerank(&table, &data).unwrap();
    assert_eq!(r.evaluated, 2);
    assert!(close(r.metrics["map"], ((1.0 + 2.0 / 3.0) / 2.0 + 0.5) / 2.0), "{:?}", r.metrics);
    assert!(close(r.metrics["mrr@10"], 0.75));
    assert_eq!(samples[1].positive_scores, vec![0.5]);
    assert_eq!(samples[1].negative_scores, vec![0.7]);
}
