//! The BERT tokenizer of an embedding model directory: `tokenizer.json` through the `tokenizers`
//! crate when present, else `vocab.txt` with [`super::wordpiece`]. Either way a text becomes
//! `[CLS] pieces [SEP]`, truncated to `max_len` tokens (the model's limit, see
//! `loader::bert_max_len`), as `tokenizer(text, truncation=True, max_length=max_len)` does.
//!
//! A `tokenizer.json` may configure padding (e.g. to a fixed 128) and truncation; both are
//! switched off at load: padding ids would be taken for text (the engine pads and masks batches
//! itself), and the limit is the model's, not the file's (sentence-transformers also passes its
//! own `max_length`).

use std::path::Path;

use serde::Deserialize;

use super::wordpiece::{BasicOptions, WordPiece};
use crate::error::{Error, Result};

enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    WordPiece(WordPiece),
}

/// `tokenizer_config.json` fields that matter for the `vocab.txt` path.
#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default = "yes")]
    do_lower_case: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    tokenize_chinese_chars: bool,
}

fn yes() -> bool {
    true
}

/// One encoded text: `ids` within the limit, and the length it had before truncation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Tokens of the whole text (`[CLS]`/`[SEP]` included); above `ids.len()` when truncated.
    pub full_len: usize,
}

impl Encoded {
    pub fn truncated(&self) -> bool {
        self.full_len > self.ids.len()
    }
}

/// A BERT tokenizer with its `[CLS]`, `[SEP]` and `[PAD]` ids.
pub struct BertTokenizer {
    backend: Backend,
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    /// Longest encoding, special tokens included.
    pub max_len: usize,
}

impl BertTokenizer {
    /// `dir/tokenizer.json` if present, else `dir/vocab.txt` with `dir/tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path, max_len: usize) -> Result<Self> {
        crate::loader::check_model_dir(dir)?;
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            Self::from_tokenizer_json(&json, max_len)
        } else {
            Self::from_vocab_txt(dir, max_len)
        }
    }

    /// A HF `tokenizer.json` (its own normaliser and pre-tokeniser apply).
    pub fn from_tokenizer_json(path: &Path, max_len: usize) -> Result<Self> {
        let bad = |e: tokenizers::Error| Error::bad_file(path.display(), e.to_string());
        let mut tok = tokenizers::Tokenizer::from_file(path).map_err(bad)?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(bad)?;
        let id =
            |s: &str| tok.token_to_id(s).ok_or_else(|| Error::Tokenizer(format!("{}: no {s} token", path.display())));
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]").unwrap_or(0));
        Self::new(Backend::Hf(Box::new(tok)), cls, sep, pad, max_len)
    }

    /// `dir/vocab.txt`, options from `dir/tokenizer_config.json` (defaults when absent).
    pub fn from_vocab_txt(dir: &Path, max_len: usize) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let opts = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let c: TokenizerConfig =
                serde_json::from_str(&text).map_err(|e| Error::bad_file(cfg_path.display(), e.to_string()))?;
            BasicOptions {
                lowercase: c.do_lower_case,
                strip_accents: c.strip_accents,
                chinese_chars: c.tokenize_chinese_chars,
            }
        } else {
            BasicOptions::default()
        };
        let vocab = dir.join("vocab.txt");
        if !vocab.is_file() {
            return Err(Error::Tokenizer(format!(
                "no tokenizer in {}: expected tokenizer.json or vocab.txt",
                dir.display()
            )));
        }
        let wp = WordPiece::from_file(&vocab, opts)?;
        let id =
            |s: &str| wp.token_to_id(s).ok_or_else(|| Error::Tokenizer(format!("{}: no {s} token", vocab.display())));
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]").unwrap_or(0));
        Self::new(Backend::WordPiece(wp), cls, sep, pad, max_len)
    }

    fn new(backend: Backend, cls: u32, sep: u32, pad: u32, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::Config(format!("max length {max_len} leaves no room for [CLS] and [SEP]")));
        }
        Ok(BertTokenizer { backend, cls, sep, pad, max_len })
    }

    /// The word pieces of `text`, no special tokens added, not truncated.
    pub fn pieces(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf(t) => {
                Ok(t.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?.get_ids().to_vec())
            }
            Backend::WordPiece(w) => Ok(w.encode(text)),
        }
    }

    /// `[CLS] pieces [SEP]`, the pieces truncated at the end to fit `max_len`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_checked(text)?.ids)
    }

    /// `[CLS] pieces [SEP]` with nothing truncated (may exceed `max_len`).
    pub fn encode_full(&self, text: &str) -> Result<Vec<u32>> {
        let pieces = self.pieces(text)?;
        let mut ids = Vec::with_capacity(pieces.len() + 2);
        ids.push(self.cls);
        ids.extend(pieces);
        ids.push(self.sep);
        Ok(ids)
    }

    /// As [`Self::encode`], also telling how long the text was before truncation.
    pub fn encode_checked(&self, text: &str) -> Result<Encoded> {
        let mut ids = self.encode_full(text)?;
        let full_len = ids.len();
        if full_len > self.max_len {
            ids.truncate(self.max_len - 1);
            ids.push(self.sep);
        }
        Ok(Encoded { ids, full_len })
    }

    /// The token string of an id (`"[CLS]"`, `"##ing"`, …).
    pub fn token_str(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::WordPiece(w) => w.id_to_token(id).map(str::to_string),
        }
    }

    /// Whether this tokenizer came from `tokenizer.json`.
    pub fn is_hf(&self) -> bool {
        matches!(self.backend, Backend::Hf(_))
    }
}
