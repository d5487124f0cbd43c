//! C-MTEB-style evaluation on local files: retrieval (NDCG@10) with any [`TextEmbedder`], and
//! reranking (MAP, MRR@10) with any [`PairScorer`]. Readers take the C-MTEB/BEIR layout:
//!
//! ```text
//! retrieval/  corpus.jsonl    {"_id", "title", "text"}
//!             queries.jsonl   {"_id", "text"}
//!             qrels/test.tsv  query-id <TAB> corpus-id <TAB> score   (with a header line)
//! rerank/     test.jsonl      {"query": str, "positive": [str], "negative": [str]}
//! ```
//!
//! The metrics follow MTEB: retrieval ranks the whole corpus by the dot product of L2-normalised
//! embeddings and scores NDCG@10 as `pytrec_eval` (`ndcg_cut_10`: gain = the qrels grade,
//! discount log2(rank + 1), ideal DCG from all judged grades; ties broken by document id
//! descending, as trec_eval does), averaged over the queries that have qrels. Reranking
//! (`RerankingEvaluator`) scores each sample's positives + negatives, skips samples with no
//! positive or no negative, and averages average precision (sklearn's, ties grouped) and the
//! reciprocal rank of the first positive within the top 10.
//!
//! [`niah`] is the needle-in-a-haystack grid for causal LMs ([`niah_plot`]: its table and heatmap).

pub mod niah;
pub mod niah_plot;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A text embedding model (e.g. the BERT embedder): one vector per text. `is_query` selects the
/// query form (an instruction prefix, for models trained with one).
pub trait TextEmbedder {
    fn embed_texts(&self, texts: &[String], is_query: bool) -> Result<Vec<Vec<f32>>>;
}

/// A cross-encoder: one relevance score per (query, passage), higher is more relevant.
pub trait PairScorer {
    fn score_pairs(&self, query: &str, passages: &[String]) -> Result<Vec<f32>>;
}

#[derive(Clone, Debug, Deserialize)]
pub struct CorpusDoc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub text: String,
}

impl CorpusDoc {
    /// The text embedded for a document: `"{title} {text}".strip()`.
    pub fn embed_text(&self) -> String {
        format!("{} {}", self.title, self.text).trim().to_string()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Query {
    #[serde(rename = "_id")]
    pub id: String,
    pub text: String,
}

/// A retrieval test set: corpus, queries and graded judgements `qrels[query][doc] = grade`.
#[derive(Clone, Debug, Default)]
pub struct RetrievalData {
    pub corpus: Vec<CorpusDoc>,
    pub queries: Vec<Query>,
    pub qrels: BTreeMap<String, HashMap<String, i64>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RerankSample {
    pub query: String,
    #[serde(default)]
    pub positive: Vec<String>,
    #[serde(default)]
    pub negative: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RerankData {
    pub samples: Vec<RerankSample>,
}

/// Metric name → value, plus how many queries (or samples) were averaged.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub task: String,
    pub evaluated: usize,
    pub metrics: BTreeMap<String, f64>,
}

/// One evaluated reranking sample: the scores of its positives and negatives.
#[derive(Clone, Debug, Serialize)]
pub struct SampleScores {
    pub positive_scores: Vec<f32>,
    pub negative_scores: Vec<f32>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line).map_err(|e| Error::bad_file(path.display(), format!("line {}: {e}", n + 1)))?,
        );
    }
    Ok(out)
}

impl RetrievalData {
    /// Reads `dir/corpus.jsonl`, `dir/queries.jsonl` and `dir/qrels/test.tsv`.
    pub fn load(dir: &Path) -> Result<RetrievalData> {
        let corpus = jsonl(&dir.join("corpus.jsonl"))?;
        let queries = jsonl(&dir.join("queries.jsonl"))?;
        let qrels_path = dir.join("qrels/test.tsv");
        let mut qrels: BTreeMap<String, HashMap<String, i64>> = BTreeMap::new();
        for (n, line) in read(&qrels_path)?.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |msg: &str| Error::bad_file(qrels_path.display(), format!("line {}: {msg}", n + 1));
            let cols: Vec<&str> = line.split('\t').collect();
            let [q, d, s] = cols[..] else {
                return Err(bad("expected query-id<TAB>corpus-id<TAB>score"));
            };
            let grade: i64 = s.trim().parse().map_err(|_| bad(&format!("score {s:?} is not an integer")))?;
            qrels.entry(q.to_string()).or_default().insert(d.to_string(), grade);
        }
        Ok(RetrievalData { corpus, queries, qrels })
    }
}

impl RerankData {
    /// Reads `dir/test.jsonl` (or `dir` itself when it is a file).
    pub fn load(dir: &Path) -> Result<RerankData> {
        let path = if dir.is_file() { dir.to_path_buf() } else { dir.join("test.jsonl") };
        Ok(RerankData { samples: jsonl(&path)? })
    }
}

// ---- metrics ------------------------------------------------------------------------------------

/// NDCG@k of one ranking (`ranked`: document ids, best first) against graded `qrels`, as
/// trec_eval's `ndcg_cut`: gain = grade (grades ≤ 0 gain nothing), discount log2(rank + 1).
pub fn ndcg_at_k(ranked: &[&str], qrels: &HashMap<String, i64>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| qrels.get(*d).map_or(0, |&g| g.max(0)) as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<i64> = qrels.values().map(|&g| g.max(0)).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal.iter().take(k).enumerate().map(|(i, &g)| g as f64 / ((i + 2) as f64).log2()).sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// Average precision of `scores` with binary labels `relevant` (sklearn's
/// `average_precision_score`: ties form one threshold). 0 when nothing is relevant.
pub fn average_precision(scores: &[f32], relevant: &[bool]) -> f64 {
    let total = relevant.iter().filter(|&&r| r).count();
    if total == 0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut seen, mut hits, mut ap, mut i) = (0usize, 0usize, 0.0, 0);
    while i < order.len() {
        // One threshold: all items tied with order[i].
        let mut j = i;
        let mut new_hits = 0;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            new_hits += relevant[order[j]] as usize;
            j += 1;
        }
        seen += j - i;
        hits += new_hits;
        ap += (new_hits as f64 / total as f64) * (hits as f64 / seen as f64);
        i = j;
    }
    ap
}

/// Reciprocal rank of the first relevant item among the top `k` by score (0 if none there).
/// Ties keep the given order (a stable sort).
pub fn reciprocal_rank(scores: &[f32], relevant: &[bool], k: usize) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.iter().take(k).position(|&i| relevant[i]).map_or(0.0, |r| 1.0 / (r + 1) as f64)
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Texts per `embed_texts` call.
const EMBED_BATCH: usize = 64;

fn embed_all(e: &dyn TextEmbedder, texts: &[String], is_query: bool) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(EMBED_BATCH) {
        let got = e.embed_texts(chunk, is_query)?;
        if got.len() != chunk.len() {
            return Err(Error::Input(format!("embedder returned {} vectors for {} texts", got.len(), chunk.len())));
        }
        out.extend(got);
    }
    for v in &mut out {
        normalise(v);
    }
    Ok(out)
}

/// NDCG@10 of `embedder` on `data` (see the module header for the exact protocol).
pub fn eval_retrieval(embedder: &dyn TextEmbedder, data: &RetrievalData) -> Result<Report> {
    let queries: Vec<&Query> = data.queries.iter().filter(|q| data.qrels.contains_key(&q.id)).collect();
    if queries.is_empty() || data.corpus.is_empty() {
        return Err(Error::Input("retrieval data has no judged queries or no corpus".into()));
    }
    let docs = embed_all(embedder, &data.corpus.iter().map(|d| d.embed_text()).collect::<Vec<_>>(), false)?;
    let qs = embed_all(embedder, &queries.iter().map(|q| q.text.clone()).collect::<Vec<_>>(), true)?;
    let mut total = 0.0;
    for (q, qv) in queries.iter().zip(&qs) {
        if docs.iter().any(|d| d.len() != qv.len()) {
            return Err(Error::Input("embeddings of different dimensions".into()));
        }
        let mut scored: Vec<(f32, &str)> = docs
            .iter()
            .zip(&data.corpus)
            .map(|(d, doc)| (d.iter().zip(qv).map(|(a, b)| a * b).sum::<f32>(), doc.id.as_str()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(a.1)));
        let ranked: Vec<&str> = scored.iter().map(|s| s.1).collect();
        total += ndcg_at_k(&ranked, &data.qrels[&q.id], 10);
    }
    let mut metrics = BTreeMap::new();
    metrics.insert("ndcg@10".to_string(), total / queries.len() as f64);
    Ok(Report { task: "retrieval".into(), evaluated: queries.len(), metrics })
}

/// MAP and MRR@10 of `scorer` on `data`, with the per-sample scores.
pub fn eval_rerank(scorer: &dyn PairScorer, data: &RerankData) -> Result<(Report, Vec<SampleScores>)> {
    let (mut map, mut mrr) = (0.0, 0.0);
    let mut samples = Vec::new();
    for s in data.samples.iter().filter(|s| !s.positive.is_empty() && !s.negative.is_empty()) {
        let passages: Vec<String> = s.positive.iter().chain(&s.negative).cloned().collect();
        let scores = scorer.score_pairs(&s.query, &passages)?;
        if scores.len() != passages.len() {
            return Err(Error::Input(format!(
                "scorer returned {} scores for {} passages",
                scores.len(),
                passages.len()
            )));
        }
        let relevant: Vec<bool> = (0..passages.len()).map(|i| i < s.positive.len()).collect();
        map += average_precision(&scores, &relevant);
        mrr += reciprocal_rank(&scores, &relevant, 10);
        let (p, n) = scores.split_at(s.positive.len());
        samples.push(SampleScores { positive_scores: p.to_vec(), negative_scores: n.to_vec() });
    }
    if samples.is_empty() {
        return Err(Error::Input("reranking data has no sample with both positives and negatives".into()));
    }
    let n = samples.len() as f64;
    let mut metrics = BTreeMap::new();
    metrics.insert("map".to_string(), map / n);
    metrics.insert("mrr@10".to_string(), mrr / n);
    Ok((Report { task: "rerank".into(), evaluated: samples.len(), metrics }, samples))
}
