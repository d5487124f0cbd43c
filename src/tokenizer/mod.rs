//! The 360Zhinao tokenizer (spec §3): tiktoken-format BPE with 11 appended special tokens, wrapped in
//! the reference's `convert` (spaces → `[spaceN]`, `<br>`/`[br]` → newline) and `deconvert`.
//!
//! Reference: `tokenization_zhinao.py` (`SPTokenizer`, `ZhinaoTokenizer`); the Python twin used for the
//! goldens is `tools/fixtures/zhinao_tokenizer.py`.
//!
//! - [`Tokenizer`] loads `vocab/360.tiktoken` (exact, [`tiktoken`]) or, failing that, a HF
//!   `tokenizer.json` ([`hf`], see its caveats).
//! - [`chat`] builds `model.chat` prompts (`make_context`) and reranker inputs.
//! - [`stream`] turns generated ids into text incrementally.
//! - [`bert`] and [`wordpiece`]: the BERT tokenizer of the embedding model (360Zhinao-search, spec §6).
//! - [`AnyTokenizer`]: whichever of the two a model directory holds.

pub mod bert;
pub mod chat;
pub mod hf;
pub mod stream;
pub mod tiktoken;
pub mod wordpiece;

use std::path::Path;

use crate::error::{Error, Result};
use hf::HfTokenizer;
use tiktoken::{TiktokenBpe, SPECIAL_TOKENS};

pub use bert::{BertTokenizer, Encoded};
pub use chat::{
    history_reserve, make_context, make_context_report, reranker_input, reranker_input_limited, ContextBudget, Message,
    RerankInput, RerankPrompt, DEFAULT_SYSTEM, RERANK_MAX_LEN,
};
pub use stream::StreamDecoder;

/// How literal special-token strings in the text are treated by [`Tokenizer::encode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialMode {
    /// `allowed_special="all"`: any special literal (including `[spaceN]` inserted by `convert`)
    /// becomes its special id. Default of `tokenizer(text)` and the reranker.
    All,
    /// `allowed_special=set()`: special literals are ordinary text. Used by `make_context` for roles
    /// and message contents, so inserted `[space4]` is encoded as several BPE tokens (spec §3.2).
    None,
    /// Only the `[spaceN]` literals become special ids (as with `All`, so space runs encode as the
    /// reference encodes them); every other special literal (`<|im_end|>`, `<eod>`) is ordinary text.
    /// For untrusted text in a prompt that otherwise parses specials (the reranker's query and
    /// documents): a document cannot forge the end of its turn.
    Spaces,
}

/// The ids of the 11 special tokens (spec §3.1), `n_ranks + 0 ..= n_ranks + 10` for a tiktoken vocab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub pad: u32,
    pub unk: u32,
    pub mask: u32,
    pub eod: u32,
    pub eop: u32,
    pub space2: u32,
    pub space3: u32,
    pub space4: u32,
    pub space8: u32,
    pub im_start: u32,
    pub im_end: u32,
}

impl SpecialIds {
    fn lookup(mut id_of: impl FnMut(&str) -> Option<u32>) -> Result<Self> {
        let mut ids = [0u32; 11];
        for (slot, literal) in ids.iter_mut().zip(SPECIAL_TOKENS) {
            *slot = id_of(literal).ok_or_else(|| Error::Tokenizer(format!("special token {literal} missing")))?;
        }
        let [pad, unk, mask, eod, eop, space2, space3, space4, space8, im_start, im_end] = ids;
        Ok(Self { pad, unk, mask, eod, eop, space2, space3, space4, space8, im_start, im_end })
    }

    /// Ids dropped by `decode(skip_special_tokens=True)`: all specials except `[spaceN]`.
    pub fn skipped_on_decode(&self) -> [u32; 7] {
        [self.pad, self.unk, self.mask, self.eod, self.eop, self.im_start, self.im_end]
    }
}

#[allow(clippy::large_enum_variant)] // one per Tokenizer: size is irrelevant
enum Backend {
    Tiktoken(TiktokenBpe),
    Hf(HfTokenizer),
}

/// A loaded 360Zhinao tokenizer.
pub struct Tokenizer {
    backend: Backend,
    specials: SpecialIds,
}

impl Tokenizer {
    /// Loads `dir/vocab/360.tiktoken`, or `dir/tokenizer.json` when there is no tiktoken file.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        crate::loader::check_model_dir(dir)?;
        let tiktoken = dir.join("vocab").join("360.tiktoken");
        let hf = dir.join("tokenizer.json");
        if tiktoken.is_file() {
            Self::from_tiktoken_file(&tiktoken)
        } else if hf.is_file() {
            Self::from_hf_file(&hf)
        } else {
            Err(Error::Tokenizer(format!(
                "no tokenizer in {}: expected vocab/360.tiktoken or tokenizer.json",
                dir.display()
            )))
        }
    }

    /// Loads a tiktoken ranks file (exact reference behaviour).
    pub fn from_tiktoken_file(path: impl AsRef<Path>) -> Result<Self> {
        let bpe = TiktokenBpe::from_file(path.as_ref())?;
        let specials = SpecialIds::lookup(|s| bpe.special_id(s))?;
        Ok(Self { backend: Backend::Tiktoken(bpe), specials })
    }

    /// Loads a HF `tokenizer.json` (see [`hf`] for where it can differ from the reference).
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let hf = HfTokenizer::from_file(path.as_ref())?;
        let specials = SpecialIds::lookup(|s| hf.token_to_id(s))?;
        Ok(Self { backend: Backend::Hf(hf), specials })
    }

    /// `SPTokenizer.encode`: [`convert`] the text, then BPE-encode it. No BOS/EOS is added.
    pub fn encode(&self, text: &str, mode: SpecialMode) -> Result<Vec<u32>> {
        let text = convert(text);
        if mode == SpecialMode::Spaces {
            return self.encode_spaces(&text);
        }
        match &self.backend {
            Backend::Tiktoken(bpe) => bpe.encode(&text, mode == SpecialMode::All),
            Backend::Hf(hf) => hf.encode(&text, mode),
        }
    }

    /// [`SpecialMode::Spaces`] on converted text: split at the `[spaceN]` literals (leftmost first, as
    /// the special-token pattern of `All` finds them), encode the text between them with no special
    /// tokens.
    fn encode_spaces(&self, text: &str) -> Result<Vec<u32>> {
        let s = &self.specials;
        let literals = [("[space2]", s.space2), ("[space3]", s.space3), ("[space4]", s.space4), ("[space8]", s.space8)];
        let plain = |t: &str, ids: &mut Vec<u32>| -> Result<()> {
            if !t.is_empty() {
                ids.extend(match &self.backend {
                    Backend::Tiktoken(bpe) => bpe.encode(t, false)?,
                    Backend::Hf(hf) => hf.encode(t, SpecialMode::None)?,
                });
            }
            Ok(())
        };
        let mut ids = Vec::new();
        let (mut start, mut from) = (0, 0);
        while let Some(off) = text[from..].find("[space") {
            let at = from + off;
            match literals.iter().find(|(lit, _)| text[at..].starts_with(lit)) {
                Some(&(lit, id)) => {
                    plain(&text[start..at], &mut ids)?;
                    ids.push(id);
                    start = at + lit.len();
                    from = start;
                }
                None => from = at + 1,
            }
        }
        plain(&text[start..], &mut ids)?;
        Ok(ids)
    }

    /// `ZhinaoTokenizer.decode`: optionally drop the skippable specials, concatenate the token bytes
    /// (specials as their literal text), decode as UTF-8 with replacement characters, [`deconvert`].
    /// Ids outside the vocabulary (e.g. lm_head padding rows) contribute nothing.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        deconvert(&String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)))
    }

    /// The raw concatenated bytes of `ids` (before UTF-8 decoding and [`deconvert`]).
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_skipped_on_decode(id) {
                continue;
            }
            if let Some(b) = self.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        bytes
    }

    /// The bytes of one token (a special token's bytes are its literal text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        match &self.backend {
            Backend::Tiktoken(bpe) => bpe.token_bytes(id),
            Backend::Hf(hf) => hf.token_bytes(id),
        }
    }

    /// A token for display: its bytes as lossy UTF-8, e.g. `" the"` or `"<|im_end|>"`.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.token_bytes(id).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Whether `decode(.., skip_special=true)` drops this id.
    pub fn is_skipped_on_decode(&self, id: u32) -> bool {
        self.specials.skipped_on_decode().contains(&id)
    }

    /// All special-token ids.
    pub fn specials(&self) -> &SpecialIds {
        &self.specials
    }

    /// `<eod>`: end of document, the EOS and generation pad id.
    pub fn eod(&self) -> u32 {
        self.specials.eod
    }

    /// `<|im_start|>`.
    pub fn im_start(&self) -> u32 {
        self.specials.im_start
    }

    /// `<|im_end|>`.
    pub fn im_end(&self) -> u32 {
        self.specials.im_end
    }

    /// `<pad>` (`tokenizer.pad_token_id`; note generation pads with `<eod>`).
    pub fn pad(&self) -> u32 {
        self.specials.pad
    }

    /// The stop ids of generation_config: `<eod>`, `<|im_start|>`, `<|im_end|>` (spec §4.3).
    pub fn stop_ids(&self) -> [u32; 3] {
        [self.specials.eod, self.specials.im_start, self.specials.im_end]
    }

    /// Number of token ids (BPE ranks plus specials); the model's embedding may be padded beyond it.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Tiktoken(bpe) => bpe.vocab_size(),
            Backend::Hf(hf) => hf.vocab_size(),
        }
    }
}

/// The tokenizer of any model directory the engine loads: the 360Zhinao tokenizer of a causal LM
/// (tiktoken file or byte-level `tokenizer.json`) or the BERT tokenizer of an embedding model
/// (WordPiece `tokenizer.json` or `vocab.txt`). What `zhinao tokenize` uses.
#[allow(clippy::large_enum_variant)] // one per command: size is irrelevant
pub enum AnyTokenizer {
    Zhinao(Tokenizer),
    Bert(BertTokenizer),
}

impl AnyTokenizer {
    /// The tokenizer of `dir`, by the directory's [`crate::loader::ModelKind`]. A BERT tokenizer
    /// gets the model's input limit (512 when the directory has no `config.json`).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        use crate::loader::{bert_max_len, BertConfig, ModelKind};
        let dir = dir.as_ref();
        Ok(match ModelKind::detect(dir)? {
            ModelKind::CausalLm => AnyTokenizer::Zhinao(Tokenizer::from_model_dir(dir)?),
            ModelKind::Bert => {
                let max_pos = if dir.join("config.json").is_file() {
                    BertConfig::load(dir)?.max_position_embeddings
                } else {
                    512
                };
                AnyTokenizer::Bert(BertTokenizer::from_model_dir(dir, bert_max_len(dir, max_pos)?.0)?)
            }
        })
    }

    /// The ids of `text`. Zhinao: [`Tokenizer::encode`] in `mode`. BERT: `[CLS] pieces [SEP]`,
    /// not truncated, or with [`SpecialMode::None`] the pieces alone.
    pub fn encode(&self, text: &str, mode: SpecialMode) -> Result<Vec<u32>> {
        match self {
            AnyTokenizer::Zhinao(t) => t.encode(text, mode),
            AnyTokenizer::Bert(t) if mode == SpecialMode::None => t.pieces(text),
            AnyTokenizer::Bert(t) => t.encode_full(text),
        }
    }

    /// A token for display (Zhinao: its bytes as lossy UTF-8; BERT: the vocabulary string).
    pub fn token_str(&self, id: u32) -> Option<String> {
        match self {
            AnyTokenizer::Zhinao(t) => t.token_str(id),
            AnyTokenizer::Bert(t) => t.token_str(id),
        }
    }

    /// The longest input the model takes, where the model truncates (BERT only).
    pub fn max_len(&self) -> Option<usize> {
        match self {
            AnyTokenizer::Zhinao(_) => None,
            AnyTokenizer::Bert(t) => Some(t.max_len),
        }
    }
}

/// The `[spaceN]` literals and the space runs they stand for, longest run first.
const SPACE_TOKENS: [(&str, &str); 4] =
    [("[space8]", "        "), ("[space4]", "    "), ("[space3]", "   "), ("[space2]", "  ")];

/// `SPTokenizer.convert`: `[br]` and `<br>` become `\n`, then runs of 8, 4, 3 and 2 ASCII spaces are
/// replaced, in that order, by the literal text `[space8]`, `[space4]`, `[space3]`, `[space2]`
/// (so 5 spaces → `[space4] `, 6 → `[space4][space2]`, 9 → `[space8] `).
pub fn convert(text: &str) -> String {
    let mut text = text.replace("[br]", "\n").replace("<br>", "\n");
    for (token, spaces) in SPACE_TOKENS {
        if text.contains(spaces) {
            text = text.replace(spaces, token);
        }
    }
    text
}

/// `SPTokenizer.deconvert`: every `[space2|3|4|8]` text becomes 2/3/4/8 spaces.
pub fn deconvert(text: &str) -> String {
    let mut text = text.to_string();
    for (token, spaces) in SPACE_TOKENS {
        if text.contains(token) {
            text = text.replace(token, spaces);
        }
    }
    text
}
