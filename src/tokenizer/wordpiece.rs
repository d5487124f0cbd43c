//! BERT's `vocab.txt` tokenizer without `tokenizer.json`: the basic tokenizer (clean text, split CJK
//! characters, optional lower-casing with accent stripping, whitespace and punctuation split) and
//! greedy longest-match-first WordPiece with the `##` continuation prefix.
//!
//! Reference: transformers `BertTokenizer` (`BasicTokenizer`, `WordpieceTokenizer`) and the
//! `tokenizers` crate's `BertNormalizer` + `BertPreTokenizer` + `WordPiece`, which agree.
//! Special-token literals (`[CLS]`, `[SEP]`, `[PAD]`, `[MASK]`, `[UNK]`) in the text are matched
//! whole before normalisation, as HF's added-token matching does.

use std::collections::HashMap;
use std::path::Path;

use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::{Error, Result};

/// Words longer than this (in chars) become `[UNK]` (HF `max_input_chars_per_word`).
const MAX_WORD_CHARS: usize = 100;

/// Literals matched as whole tokens before normalisation.
const SPECIAL_LITERALS: [&str; 5] = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"];

/// Options of the basic tokenizer (`tokenizer_config.json`).
#[derive(Clone, Copy, Debug)]
pub struct BasicOptions {
    /// `do_lower_case` (default true).
    pub lowercase: bool,
    /// `strip_accents`; `None` follows `lowercase`, as in HF.
    pub strip_accents: Option<bool>,
    /// `tokenize_chinese_chars` (default true).
    pub chinese_chars: bool,
}

impl Default for BasicOptions {
    fn default() -> Self {
        BasicOptions { lowercase: true, strip_accents: None, chinese_chars: true }
    }
}

/// A `vocab.txt` WordPiece tokenizer.
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    /// id → token (the line of vocab.txt).
    tokens: Vec<String>,
    unk: u32,
    opts: BasicOptions,
}

impl WordPiece {
    /// Reads `vocab.txt` (one token a line, id = line number); `[UNK]` must be present.
    pub fn from_file(path: &Path, opts: BasicOptions) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut vocab = HashMap::new();
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let tok = line.trim_end_matches('\r');
            tokens.push(tok.to_string());
            // A duplicate keeps its first id, as HF's `load_vocab` (an OrderedDict) keeps the last:
            // the vocab files in use have none, so either is fine; first is stable.
            vocab.entry(tok.to_string()).or_insert(i as u32);
        }
        let unk = *vocab.get("[UNK]").ok_or_else(|| Error::bad_file(path.display(), "no [UNK] token"))?;
        Ok(WordPiece { vocab, tokens, unk, opts })
    }

    /// The id of a token, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The token of an id (its line of vocab.txt).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Ids of `text` without `[CLS]`/`[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (piece, special) in split_specials(text) {
            match special.and_then(|s| self.token_to_id(s)) {
                Some(id) => ids.push(id),
                None => {
                    for word in self.basic_tokenize(piece) {
                        self.wordpiece(&word, &mut ids);
                    }
                }
            }
        }
        ids
    }

    /// The basic tokenizer: words and punctuation marks, normalised.
    pub fn basic_tokenize(&self, text: &str) -> Vec<String> {
        let mut spaced = String::with_capacity(text.len());
        for ch in text.chars() {
            if ch == '\0' || ch == '\u{fffd}' || is_control(ch) {
                continue;
            }
            if is_whitespace(ch) {
                spaced.push(' ');
            } else if self.opts.chinese_chars && is_cjk(ch) {
                spaced.push(' ');
                spaced.push(ch);
                spaced.push(' ');
            } else {
                spaced.push(ch);
            }
        }
        let strip = self.opts.strip_accents.unwrap_or(self.opts.lowercase);
        let mut words = Vec::new();
        for word in spaced.split(' ').filter(|w| !w.is_empty()) {
            let mut w = if self.opts.lowercase { word.to_lowercase() } else { word.to_string() };
            if strip {
                w = w.nfd().map(|(c, _)| c).filter(|c| !c.is_mark_nonspacing()).collect();
            }
            // Punctuation split: every punctuation char is a word of its own.
            let mut cur = String::new();
            for ch in w.chars() {
                if is_punctuation(ch) {
                    if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                    words.push(ch.to_string());
                } else {
                    cur.push(ch);
                }
            }
            if !cur.is_empty() {
                words.push(cur);
            }
        }
        words
    }

    /// Greedy longest-match-first WordPiece of one word; the whole word is `[UNK]` when any
    /// part has no match.
    fn wordpiece(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while end > start {
                let a = chars[start].0;
                let b = chars.get(end).map_or(word.len(), |c| c.0);
                let sub = if start > 0 { format!("##{}", &word[a..b]) } else { word[a..b].to_string() };
                if let Some(&id) = self.vocab.get(&sub) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }
}

/// Cuts `text` into (piece, Some(literal)) for special-token literals and (piece, None) between.
fn split_specials(text: &str) -> Vec<(&str, Option<&'static str>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let next = SPECIAL_LITERALS
            .iter()
            .filter_map(|s| rest.find(s).map(|i| (i, *s)))
            .min_by_key(|&(i, s)| (i, usize::MAX - s.len()));
        match next {
            Some((i, s)) => {
                if i > 0 {
                    out.push((&rest[..i], None));
                }
                out.push((&rest[i..i + s.len()], Some(s)));
                rest = &rest[i + s.len()..];
            }
            None => {
                out.push((rest, None));
                break;
            }
        }
    }
    out
}

/// HF `_is_whitespace`: space, \t, \n, \r and Unicode Zs.
fn is_whitespace(ch: char) -> bool {
    matches!(ch, ' ' | '\t' | '\n' | '\r') || ch.is_separator_space()
}

/// HF `_is_control`: Cc and Cf, except \t \n \r (which are whitespace).
fn is_control(ch: char) -> bool {
    if matches!(ch, '\t' | '\n' | '\r') {
        return false;
    }
    ch.is_other_control() || ch.is_other_format()
}

/// HF `_is_punctuation`: all non-alphanumeric ASCII printable chars, and Unicode P*.
fn is_punctuation(ch: char) -> bool {
    let c = ch as u32;
    (33..=47).contains(&c)
        || (58..=64).contains(&c)
        || (91..=96).contains(&c)
        || (123..=126).contains(&c)
        || ch.is_punctuation()
}

/// HF `_is_chinese_char`: the CJK Unified Ideograph blocks (not Hangul or kana).
fn is_cjk(ch: char) -> bool {
    matches!(ch as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}
