//! `zhinao.Embedder` (BERT sentence embeddings) and `zhinao.Reranker` (360Zhinao reranker scores):
//! the same calls as `zhinao embed` and `zhinao rerank`, results as numpy arrays.

use std::path::PathBuf;

use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{context, py_err, texts, warn};
use crate::embed::{self, EmbedOptions};
use crate::loader::Pooling;
use crate::models::reranker::{self, ScorePosition};
use crate::tokenizer::RerankInput;

/// Lists at most this many input positions in one message.
const LIST_MAX: usize = 10;

fn list(ix: &[usize]) -> String {
    let shown: Vec<String> = ix.iter().take(LIST_MAX).map(|i| i.to_string()).collect();
    match ix.len().saturating_sub(LIST_MAX) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

fn non_empty(n: usize, what: &str) -> PyResult<()> {
    if n == 0 {
        return Err(PyValueError::new_err(format!("{what} is empty: give at least one text")));
    }
    Ok(())
}

/// A BERT embedding model (360Zhinao-search or any sentence-transformers BERT directory) on the GPU.
#[pyclass(module = "zhinao._zhinao", frozen)]
pub struct Embedder {
    inner: embed::Embedder,
}

#[pymethods]
impl Embedder {
    #[new]
    #[pyo3(signature = (model_dir, *, backend = None, device = None, pooling = None, normalize = true,
                        query_instruction = None, max_batch_tokens = 8192, truncate = true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        backend: Option<String>,
        device: Option<String>,
        pooling: Option<String>,
        normalize: bool,
        query_instruction: Option<String>,
        max_batch_tokens: usize,
        truncate: bool,
    ) -> PyResult<Self> {
        let pooling = match pooling.as_deref() {
            None => None,
            Some("cls") => Some(Pooling::Cls),
            Some("mean") => Some(Pooling::Mean),
            Some(p) => return Err(PyValueError::new_err(format!("pooling {p:?}: expected 'cls' or 'mean'"))),
        };
        let opts = EmbedOptions {
            pooling,
            normalize,
            query_instruction: query_instruction.as_deref().map(embed::query_instruction),
            max_batch_tokens,
            truncate,
        };
        let inner = py
            .detach(|| embed::Embedder::load(context(backend, device)?, &model_dir, &opts, &mut |_, _| {}))
            .map_err(py_err)?;
        Ok(Embedder { inner })
    }

    /// Embeddings of `texts` as a float32 array [N, D], in input order. `is_query` prepends the
    /// query instruction, if one was given.
    #[pyo3(signature = (texts, *, is_query = false))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        is_query: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = super::texts(texts, "texts")?;
        non_empty(texts.len(), "texts")?;
        let e = &self.inner;
        let (seqs, truncated) = py.detach(|| e.tokenize_texts(&texts, is_query)).map_err(py_err)?;
        if let Some(t) = truncated.first() {
            if !e.truncate {
                return Err(py_err(e.too_long(&format!("texts[{}]", t.index), t.tokens)));
            }
            let ix: Vec<usize> = truncated.iter().map(|t| t.index).collect();
            warn(
                py,
                &format!(
                    "{} text(s) longer than the model's limit of {} tokens were truncated to it (texts[{}]); truncate=False refuses them instead",
                    truncated.len(),
                    e.tokenizer.max_len,
                    list(&ix)
                ),
            )?;
        }
        let vecs = py.detach(|| e.embed_ids(&seqs, &mut |_, _| {})).map_err(py_err)?;
        // The one copy: the engine's rows into the numpy array.
        PyArray2::from_vec2(py, &vecs).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Token ids of one text (`[CLS] … [SEP]`, truncated to the model's limit).
    #[pyo3(signature = (text, *, is_query = false))]
    fn tokenize(&self, text: &str, is_query: bool) -> PyResult<Vec<u32>> {
        self.inner.tokenize(text, is_query).map_err(py_err)
    }

    /// The embedding width D.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.model.cfg.hidden_size
    }

    /// The longest input in tokens (`[CLS]` and `[SEP]` included).
    #[getter]
    fn max_len(&self) -> usize {
        self.inner.tokenizer.max_len
    }

    /// `"cls"` or `"mean"`.
    #[getter]
    fn pooling(&self) -> &'static str {
        match self.inner.pooling {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

/// The 360Zhinao reranker on the GPU: a relevance score per (query, passage) pair.
#[pyclass(module = "zhinao._zhinao", frozen)]
pub struct Reranker {
    inner: reranker::Reranker,
    position: ScorePosition,
    truncate: bool,
}

impl Reranker {
    /// Prompts for the pairs, each truncated as the reference does (warned), or refused when
    /// `truncate` is off.
    fn inputs(&self, py: Python<'_>, pairs: &[(String, String)]) -> PyResult<Vec<RerankInput>> {
        let r = &self.inner;
        let checked = py
            .detach(|| {
                pairs
                    .iter()
                    .map(|(q, d)| Ok(r.inputs_checked(q, std::slice::from_ref(d))?.remove(0)))
                    .collect::<crate::Result<Vec<_>>>()
            })
            .map_err(py_err)?;
        let cut: Vec<(usize, usize)> = checked.iter().enumerate().filter_map(|(i, (_, n))| n.map(|n| (i, n))).collect();
        if let Some(&(i, tokens)) = cut.first() {
            let limit = r.max_input_len();
            if !self.truncate {
                return Err(py_err(crate::Error::Input(format!(
                    "pair {i}: the query and document make a prompt of {tokens} tokens, more than the reranker takes ({limit}); truncation is off"
                ))));
            }
            let ix: Vec<usize> = cut.iter().map(|c| c.0).collect();
            warn(
                py,
                &format!(
                    "{} pair(s) made prompts longer than the reranker's {limit} tokens and were truncated to it, as the reference does (pair {}); truncate=False refuses them instead",
                    cut.len(),
                    list(&ix)
                ),
            )?;
        }
        Ok(checked.into_iter().map(|(i, _)| i).collect())
    }

    fn run<'py>(
        &self,
        py: Python<'py>,
        pairs: &[(String, String)],
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        non_empty(pairs.len(), "the documents")?;
        let inputs = self.inputs(py, pairs)?;
        let scores = py.detach(|| self.inner.score_inputs(&inputs, self.position)).map_err(py_err)?;
        let v: Vec<f32> = scores.iter().map(|s| if normalize { s.prob } else { s.raw }).collect();
        Ok(PyArray1::from_vec(py, v))
    }
}

#[pymethods]
impl Reranker {
    #[new]
    #[pyo3(signature = (model_dir, *, backend = None, device = None, position = "before-label", truncate = true))]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        backend: Option<String>,
        device: Option<String>,
        position: &str,
        truncate: bool,
    ) -> PyResult<Self> {
        let position: ScorePosition = position.parse().map_err(py_err)?;
        let inner = py
            .detach(|| reranker::Reranker::load(context(backend, device)?, &model_dir, &mut |_, _| {}))
            .map_err(|e| match e {
                crate::Error::MissingTensor { name, .. } if name.starts_with("linear.") => {
                    py_err(crate::Error::ModelDir {
                        path: model_dir.clone(),
                        msg: format!("no `linear` score head ({name}): not a 360Zhinao reranker"),
                    })
                }
                e => py_err(e),
            })?;
        Ok(Reranker { inner, position, truncate })
    }

    /// Raw scores (`normalize=True`: their sigmoid, in (0, 1)) of `query` against each document,
    /// as a float32 array [N] in the order given.
    #[pyo3(signature = (query, docs, *, normalize = false))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        docs: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let query: String = query.extract().map_err(|_| PyTypeError::new_err("query must be a str"))?;
        let docs = texts(docs, "docs")?;
        let pairs: Vec<(String, String)> = docs.into_iter().map(|d| (query.clone(), d)).collect();
        self.run(py, &pairs, normalize)
    }

    /// Scores of (query, document) pairs, as `score` but each pair with its own query.
    #[pyo3(signature = (pairs, *, normalize = false))]
    fn score_pairs<'py>(
        &self,
        py: Python<'py>,
        pairs: &Bound<'py, PyAny>,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let bad = |i: usize| PyTypeError::new_err(format!("pairs[{i}] must be a (query, document) pair of str"));
        if pairs.is_instance_of::<pyo3::types::PyString>() {
            return Err(PyTypeError::new_err("pairs must be a sequence of (query, document) pairs"));
        }
        let mut v = Vec::new();
        for (i, item) in pairs.try_iter()?.enumerate() {
            let item = item?;
            let seq: Vec<Bound<'py, PyAny>> = match item.cast::<PyTuple>() {
                Ok(t) => t.iter().collect(),
                Err(_) => item.extract().map_err(|_| bad(i))?,
            };
            match seq.as_slice() {
                [q, d] => {
                    v.push((q.extract::<String>().map_err(|_| bad(i))?, d.extract::<String>().map_err(|_| bad(i))?))
                }
                _ => return Err(bad(i)),
            }
        }
        self.run(py, &v, normalize)
    }

    /// The longest prompt in tokens (the reference's 1024, or the model's context when shorter).
    #[getter]
    fn max_len(&self) -> usize {
        self.inner.max_input_len()
    }
}
