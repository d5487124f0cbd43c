//! What a model directory is, decided before anything is loaded, so a wrong path or a model of the
//! wrong kind gets an error that says so (not a missing tokenizer or an unsupported activation).
//!
//! - [`check_model_dir`]: the path exists and is a directory.
//! - [`ModelKind`]: a 360Zhinao causal LM (chat, base, Int4, the reranker's backbone) or a BERT
//!   encoder (360Zhinao-search and other sentence-transformers directories), from `config.json`'s
//!   `model_type` / `architectures`, or from the tokenizer files when there is no `config.json`.
//! - [`bert_max_len`]: the longest input of a BERT directory (`max_position_embeddings`, or
//!   sentence-transformers' `max_seq_length` when smaller).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Fails unless `dir` exists and is a directory.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let msg = if dir.exists() {
        "is not a directory (give the model directory, not a file in it)"
    } else {
        "no such model directory"
    };
    Err(Error::ModelDir { path: dir.to_path_buf(), msg: msg.into() })
}

/// The model families the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// `ZhinaoForCausalLM` (generate, chat, perplexity; with a `linear` head, the reranker).
    CausalLm,
    /// A BERT encoder (`BertModel`): embeddings.
    Bert,
}

impl ModelKind {
    /// How an error names this kind.
    pub fn describe(self) -> &'static str {
        match self {
            ModelKind::CausalLm => "a 360Zhinao causal LM (ZhinaoForCausalLM)",
            ModelKind::Bert => "an embedding model (BertModel)",
        }
    }

    /// The kind a `config.json` value declares (`model_type`, then `architectures`); `None` when
    /// it names neither family (the loaders then judge the fields themselves).
    pub fn of_config(json: &serde_json::Value) -> Option<ModelKind> {
        let from_name = |s: &str| {
            let s = s.to_ascii_lowercase();
            if s.contains("zhinao") {
                Some(ModelKind::CausalLm)
            } else if s.contains("bert") {
                Some(ModelKind::Bert)
            } else {
                None
            }
        };
        if let Some(k) = json.get("model_type").and_then(|v| v.as_str()).and_then(from_name) {
            return Some(k);
        }
        json.get("architectures")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .find_map(from_name)
    }

    /// The kind of a model directory: its `config.json` when that names a family, else its
    /// tokenizer files (`vocab/360.tiktoken` → causal LM; a WordPiece `tokenizer.json` or a lone
    /// `vocab.txt` → BERT; another `tokenizer.json` → causal LM).
    pub fn detect(dir: &Path) -> Result<ModelKind> {
        check_model_dir(dir)?;
        let cfg = dir.join("config.json");
        if cfg.is_file() {
            if let Some(k) = ModelKind::of_config(&read_value(&cfg)?) {
                return Ok(k);
            }
        }
        if dir.join("vocab").join("360.tiktoken").is_file() {
            return Ok(ModelKind::CausalLm);
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let model_type = read_value(&json)?.pointer("/model/type").and_then(|t| t.as_str()).map(str::to_string);
            return Ok(if model_type.as_deref() == Some("WordPiece") { ModelKind::Bert } else { ModelKind::CausalLm });
        }
        if dir.join("vocab.txt").is_file() {
            return Ok(ModelKind::Bert);
        }
        Err(Error::ModelDir {
            path: dir.to_path_buf(),
            msg: "not a model directory: no config.json naming the model, and no vocab/360.tiktoken, tokenizer.json or vocab.txt".into(),
        })
    }

    /// Fails with a [`Error::WrongModelKind`] unless `config` (the parsed `config.json` of `dir`)
    /// is of kind `want` or names no family.
    pub fn expect(dir: &Path, config: &serde_json::Value, want: ModelKind) -> Result<()> {
        match ModelKind::of_config(config) {
            Some(found) if found != want => Err(Error::WrongModelKind {
                path: dir.to_path_buf(),
                found: found.describe().into(),
                wanted: want.describe().into(),
                hint: match found {
                    ModelKind::Bert => " (it makes embeddings: use `zhinao embed` or `zhinao eval retrieval`)".into(),
                    ModelKind::CausalLm => {
                        " (use `zhinao generate`, `chat` or `perplexity`; a reranker uses `zhinao rerank`)".into()
                    }
                },
            }),
            _ => Ok(()),
        }
    }
}

fn read_value(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// `sentence_bert_config.json` of a sentence-transformers directory.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SentenceBertConfig {
    /// Longest input in tokens, `[CLS]` and `[SEP]` included.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
}

impl SentenceBertConfig {
    /// `dir/sentence_bert_config.json`, or `None` when absent.
    pub fn load(dir: &Path) -> Result<Option<SentenceBertConfig>> {
        let p = dir.join("sentence_bert_config.json");
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    }
}

/// The longest input (in tokens, `[CLS]`/`[SEP]` included) a BERT directory takes, and where that
/// limit comes from: `max_seq_length` of `sentence_bert_config.json` when present and not above
/// `max_position_embeddings` (what sentence-transformers truncates to), else
/// `max_position_embeddings`.
pub fn bert_max_len(dir: &Path, max_position_embeddings: usize) -> Result<(usize, &'static str)> {
    Ok(match SentenceBertConfig::load(dir)?.and_then(|s| s.max_seq_length) {
        Some(n) if n > 0 && n <= max_position_embeddings => (n, "max_seq_length of sentence_bert_config.json"),
        _ => (max_position_embeddings, "max_position_embeddings of config.json"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{BertConfig, ZhinaoConfig};

    fn temp(name: &str, config: Option<&str>) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zhinao-kind-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        if let Some(c) = config {
            std::fs::write(d.join("config.json"), c).unwrap();
        }
        d
    }

    #[test]
    fn kinds_from_config_and_files() {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(ModelKind::of_config(&json(r#"{"model_type": "bert"}"#)), Some(ModelKind::Bert));
        assert_eq!(ModelKind::of_config(&json(r#"{"architectures": ["BertModel"]}"#)), Some(ModelKind::Bert));
        assert_eq!(ModelKind::of_config(&json(r#"{"model_type": "zhinao"}"#)), Some(ModelKind::CausalLm));
        assert_eq!(
            ModelKind::of_config(&json(r#"{"architectures": ["ZhinaoForCausalLM"]}"#)),
            Some(ModelKind::CausalLm)
        );
        assert_eq!(ModelKind::of_config(&json(r#"{"hidden_size": 8}"#)), None);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        assert_eq!(ModelKind::detect(&root.join("tiny-bert")).unwrap(), ModelKind::Bert);
        assert_eq!(ModelKind::detect(&root.join("tiny-zhinao")).unwrap(), ModelKind::CausalLm);
        assert_eq!(ModelKind::detect(&root.join("tiny-zhinao-hf")).unwrap(), ModelKind::CausalLm);
        let e = ModelKind::detect(&root.join("no-such")).unwrap_err();
        assert!(matches!(e, Error::ModelDir { .. }) && e.to_string().contains("no such model directory"), "{e}");
        let empty = temp("empty", None);
        assert!(ModelKind::detect(&empty).unwrap_err().to_string().contains("not a model directory"));
        std::fs::remove_dir_all(&empty).ok();
    }

    #[test]
    fn loaders_refuse_the_other_kind_and_missing_dirs() {
        let lm = temp(
            "lm",
            Some(
                r#"{"model_type": "zhinao", "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 1, "intermediate_size": 8, "vocab_size": 8}"#,
            ),
        );
        let bert = temp("bert", Some(r#"{"model_type": "bert", "architectures": ["BertModel"]}"#));
        let e = BertConfig::load(&lm).unwrap_err();
        assert!(matches!(e, Error::WrongModelKind { .. }) && e.to_string().contains("not an embedding model"), "{e}");
        let e = ZhinaoConfig::load(&bert).unwrap_err();
        assert!(e.to_string().contains("is an embedding model") && e.to_string().contains("zhinao embed"), "{e}");
        assert!(ZhinaoConfig::load(&lm).is_ok() && BertConfig::load(&bert).is_ok());
        for e in [
            BertConfig::load(Path::new("/no/such/dir")).unwrap_err(),
            ZhinaoConfig::load(Path::new("/no/such/dir")).unwrap_err(),
        ] {
            assert_eq!(e.to_string(), "/no/such/dir: no such model directory");
        }
        // max_seq_length bounds the BERT input when present and not above the position table.
        assert_eq!(bert_max_len(&bert, 512).unwrap().0, 512);
        std::fs::write(bert.join("sentence_bert_config.json"), r#"{"max_seq_length": 256}"#).unwrap();
        assert_eq!(bert_max_len(&bert, 512).unwrap(), (256, "max_seq_length of sentence_bert_config.json"));
        assert_eq!(bert_max_len(&bert, 128).unwrap().0, 128);
        std::fs::remove_dir_all(&lm).ok();
        std::fs::remove_dir_all(&bert).ok();
    }
}
