//! CLIP's byte-level BPE tokenizer, through the `tokenizers` library.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::VitError;

/// CLIP's start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also its padding and unknown token).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// CLIP's context length: the text tower has 77 positions.
pub const CONTEXT_LENGTH: usize = 77;
/// The tokenizer file of a Hugging Face model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The vocabulary file of a model folder without `tokenizer.json`.
pub const VOCAB_FILE: &str = "vocab.json";
/// The merges file of a model folder without `tokenizer.json`.
pub const MERGES_FILE: &str = "merges.txt";
/// Number of merges of CLIP's BPE file that make its 49,408-token vocabulary
/// (`49152 - 256 - 2`, as CLIP's `SimpleTokenizer` reads them).
pub const CLIP_NUM_MERGES: usize = 48_894;

/// The pre-tokenizer pattern of transformers' `CLIPTokenizer`: the special tokens, English
/// contractions, runs of letters, single digits, runs of other non-space characters.
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's tokenizer: a byte-level BPE model from the `tokenizers` library with CLIP's
/// normalisation (NFC, runs of whitespace to one space, lower case), its pre-tokenizer, the
/// start and end tokens around every sequence, and truncation to the context length
/// (77: at most 75 text tokens between the two).
///
/// Sources, all giving the ids of transformers' `CLIPTokenizer` (checked on some 1,300
/// strings in the tests):
/// - a model folder's `tokenizer.json` ([`from_file`](Self::from_file),
///   [`from_dir`](Self::from_dir)), used as written;
/// - `vocab.json` + `merges.txt` ([`from_vocab_merges_files`](Self::from_vocab_merges_files),
///   or [`from_dir`](Self::from_dir) when there is no `tokenizer.json`), with the pipeline of
///   transformers' `CLIPTokenizer`;
/// - CLIP's own BPE file `bpe_simple_vocab_16e6.txt.gz` ([`from_bpe_file`](Self::from_bpe_file)).
///
/// Texts are encoded as they are: transformers' tokenizer does not apply the `ftfy` and HTML
/// unescaping of OpenAI's original tokenizer either.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    context_length: usize,
    source: Option<PathBuf>,
}

fn tok_err(path: Option<&Path>, message: impl Into<String>) -> VitError {
    VitError::Tokenizer {
        path: path.map(Path::to_path_buf),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, VitError> {
    std::fs::read(path).map_err(|source| VitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The byte -> printable character table of byte-level BPE, in the order CLIP's vocabulary
/// lists it (printable Latin-1 first, then the remaining bytes mapped above U+00FF).
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut out: Vec<char> = (0..256u32)
        .filter(|b| printable(*b))
        .filter_map(char::from_u32)
        .collect();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable(b) {
            out.extend(char::from_u32(256 + n));
            n += 1;
        }
    }
    out
}

/// Special-token names from `tokenizer_config.json` (or `special_tokens_map.json`), falling
/// back to CLIP's.
fn special_names(dir: Option<&Path>) -> (String, String, String) {
    let mut names = (
        BOS_TOKEN.to_owned(),
        EOS_TOKEN.to_owned(),
        EOS_TOKEN.to_owned(),
    );
    let Some(dir) = dir else { return names };
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&text)
        else {
            continue;
        };
        let get = |key: &str| match map.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        if let Some(s) = get("bos_token") {
            names.0 = s;
        }
        if let Some(s) = get("eos_token") {
            names.1 = s;
        }
        if let Some(s) = get("pad_token") {
            names.2 = s;
        }
    }
    names
}

impl ClipTokenizer {
    /// The tokenizer of a model folder: `dir/tokenizer.json` when it exists, otherwise
    /// `dir/vocab.json` + `dir/merges.txt`. Special-token names come from
    /// `tokenizer_config.json` / `special_tokens_map.json` when present (CLIP's by default).
    ///
    /// # Errors
    /// [`VitError::Tokenizer`] naming the folder when it holds neither, or naming the file that
    /// does not parse; as [`from_file`](Self::from_file) /
    /// [`from_vocab_merges_files`](Self::from_vocab_merges_files).
    pub fn from_dir(dir: &Path) -> Result<Self, VitError> {
        let json = dir.join(TOKENIZER_FILE);
        let vocab = dir.join(VOCAB_FILE);
        let merges = dir.join(MERGES_FILE);
        let names = special_names(Some(dir));
        if json.is_file() {
            let text = read(&json)?;
            let inner = Tokenizer::from_bytes(&text)
                .map_err(|e| tok_err(Some(&json), format!("does not parse: {e}")))?;
            Self::finish(inner, &names, Some(json))
        } else if vocab.is_file() && merges.is_file() {
            let inner = Self::build_from_files(&vocab, &merges, &names)?;
            Self::finish(inner, &names, Some(dir.to_path_buf()))
        } else {
            Err(tok_err(
                Some(dir),
                format!(
                    "the folder has neither `{TOKENIZER_FILE}` nor `{VOCAB_FILE}` + `{MERGES_FILE}`"
                ),
            ))
        }
    }

    /// A `tokenizer.json` file (special-token names from the files next to it, as
    /// [`from_dir`](Self::from_dir)).
    ///
    /// # Errors
    /// [`VitError::Io`] when it cannot be read, [`VitError::Tokenizer`] naming the file when
    /// it does not parse or lacks CLIP's special tokens.
    pub fn from_file(path: &Path) -> Result<Self, VitError> {
        let text = read(path)?;
        let inner = Tokenizer::from_bytes(&text)
            .map_err(|e| tok_err(Some(path), format!("does not parse: {e}")))?;
        let names = special_names(path.parent());
        Self::finish(inner, &names, Some(path.to_path_buf()))
    }

    /// `vocab.json` (token -> id) and `merges.txt` (an optional `#version` line, then one
    /// merge `a b` per line), with transformers' `CLIPTokenizer` pipeline.
    ///
    /// # Errors
    /// [`VitError::Io`] when a file cannot be read; [`VitError::Tokenizer`] naming the file
    /// (and line) that does not parse.
    pub fn from_vocab_merges_files(vocab: &Path, merges: &Path) -> Result<Self, VitError> {
        let names = special_names(vocab.parent());
        let inner = Self::build_from_files(vocab, merges, &names)?;
        Self::finish(inner, &names, Some(vocab.to_path_buf()))
    }

    fn build_from_files(
        vocab_path: &Path,
        merges_path: &Path,
        names: &(String, String, String),
    ) -> Result<Tokenizer, VitError> {
        let vocab: HashMap<String, u32> =
            serde_json::from_slice(&read(vocab_path)?).map_err(|e| {
                tok_err(
                    Some(vocab_path),
                    format!("is not a JSON map of token -> id: {e}"),
                )
            })?;
        let text = String::from_utf8(read(merges_path)?)
            .map_err(|e| tok_err(Some(merges_path), format!("is not UTF-8: {e}")))?;
        let mut merges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                    merges.push((a.to_owned(), b.to_owned()));
                }
                _ => {
                    return Err(tok_err(
                        Some(merges_path),
                        format!(
                            "line {}: expected two tokens separated by one space, got {line:?}",
                            i + 1
                        ),
                    ));
                }
            }
        }
        Self::build(vocab, merges, names).map_err(|e| match e {
            VitError::Tokenizer {
                path: None,
                message,
            } => VitError::Tokenizer {
                path: Some(merges_path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// A CLIP tokenizer from a vocabulary and merges in memory, with transformers'
    /// `CLIPTokenizer` pipeline and CLIP's special tokens.
    ///
    /// # Errors
    /// [`VitError::Tokenizer`] when a merge uses a token missing from the vocabulary or the
    /// special tokens are not in it.
    pub fn from_vocab_merges(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
    ) -> Result<Self, VitError> {
        let names = special_names(None);
        let inner = Self::build(vocab, merges, &names)?;
        Self::finish(inner, &names, None)
    }

    /// CLIP's own BPE file (`bpe_simple_vocab_16e6.txt`, optionally gzip-compressed as it
    /// ships in OpenAI's CLIP and in `open-clip-torch`): the vocabulary is built as CLIP's
    /// `SimpleTokenizer` builds it (the byte alphabet, the same with `</w>`, the first
    /// [`CLIP_NUM_MERGES`] merges joined, then `<|startoftext|>` and `<|endoftext|>`:
    /// 49,408 tokens).
    ///
    /// # Errors
    /// [`VitError::Io`] when the file cannot be read, [`VitError::Tokenizer`] naming it when
    /// it is not such a file.
    pub fn from_bpe_file(path: &Path) -> Result<Self, VitError> {
        Self::from_bpe_file_with(path, CLIP_NUM_MERGES)
    }

    /// As [`from_bpe_file`](Self::from_bpe_file), keeping only the first `num_merges`
    /// merges (a smaller vocabulary of `512 + num_merges + 2` tokens, consistent with the
    /// full one on its first ids).
    ///
    /// # Errors
    /// As [`from_bpe_file`](Self::from_bpe_file); also when the file has fewer merges.
    pub fn from_bpe_file_with(path: &Path, num_merges: usize) -> Result<Self, VitError> {
        let raw = read(path)?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| tok_err(Some(path), format!("is not a valid gzip file: {e}")))?;
            out
        } else {
            raw
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| tok_err(Some(path), format!("is not UTF-8: {e}")))?;
        let mut merges = Vec::with_capacity(num_merges);
        for (i, line) in text.split('\n').skip(1).take(num_merges).enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
                _ => {
                    return Err(tok_err(
                        Some(path),
                        format!("line {}: expected a merge `a b`, got {line:?}", i + 2),
                    ));
                }
            }
        }
        if merges.len() < num_merges {
            return Err(tok_err(
                Some(path),
                format!(
                    "has {} merges, {num_merges} are needed (not CLIP's BPE file?)",
                    merges.len()
                ),
            ));
        }
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(char::to_string).collect();
        tokens.extend(alphabet.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(BOS_TOKEN.to_owned());
        tokens.push(EOS_TOKEN.to_owned());
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.into_iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| tok_err(Some(path), "too many tokens"))?;
            vocab.insert(t, id);
        }
        let names = special_names(None);
        let inner =
            Self::build(vocab, merges, &names).map_err(|e| tok_err(Some(path), e.to_string()))?;
        Self::finish(inner, &names, Some(path.to_path_buf()))
    }

    /// The `tokenizer.json` of transformers' `CLIPTokenizer` for this vocabulary, parsed by
    /// the `tokenizers` library.
    fn build(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        (bos, eos, _pad): &(String, String, String),
    ) -> Result<Tokenizer, VitError> {
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| tok_err(None, format!("the vocabulary has no special token `{t}`")))
        };
        let (bos_id, eos_id) = (id(bos)?, id(eos)?);
        let special = |id: u32, content: &str| {
            serde_json::json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        };
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(bos_id, bos), special(eos_id, eos)],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [eos, eos_id], "cls": [bos, bos_id],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": eos, "continuing_subword_prefix": "",
                "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        serde_json::from_value::<Tokenizer>(json).map_err(|e| tok_err(None, e.to_string()))
    }

    fn finish(
        mut inner: Tokenizer,
        (bos, eos, pad): &(String, String, String),
        source: Option<PathBuf>,
    ) -> Result<Self, VitError> {
        let path = source.as_deref();
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(path, format!("the vocabulary has no special token `{t}`")))
        };
        let (bos, eos, pad) = (id(bos)?, id(eos)?, id(pad)?);
        inner.with_padding(None);
        let mut this = Self {
            inner,
            bos,
            eos,
            pad,
            context_length: CONTEXT_LENGTH,
            source,
        };
        this.set_truncation()?;
        // A tokenizer that does not put CLIP's start and end tokens around a text would pool
        // the text tower at the wrong position: refuse it here.
        let probe = this.encode("a photo")?;
        if probe.first() != Some(&this.bos) || probe.last() != Some(&this.eos) || probe.len() < 3 {
            return Err(tok_err(
                this.source.as_deref(),
                format!(
                    "does not put the start ({}) and end ({}) tokens around a text: \"a photo\" -> {probe:?}",
                    this.bos, this.eos
                ),
            ));
        }
        Ok(this)
    }

    fn set_truncation(&mut self) -> Result<(), VitError> {
        let params = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: self.context_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        self.inner
            .with_truncation(Some(params))
            .map_err(|e| tok_err(self.source.as_deref(), e.to_string()))?;
        Ok(())
    }

    /// The same tokenizer truncating to `context_length` tokens (start and end included).
    ///
    /// # Errors
    /// [`VitError::Tokenizer`] when `context_length < 3`.
    pub fn with_context_length(mut self, context_length: usize) -> Result<Self, VitError> {
        if context_length < 3 {
            return Err(tok_err(
                self.source.as_deref(),
                format!("context length {context_length} leaves no room for text"),
            ));
        }
        self.context_length = context_length;
        self.set_truncation()?;
        Ok(self)
    }

    /// Token ids of `text`: `<|startoftext|>`, at most `context_length - 2` text tokens,
    /// `<|endoftext|>`.
    ///
    /// # Errors
    /// [`VitError::Tokenizer`] when the tokenizer library fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, VitError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err(self.source.as_deref(), format!("encoding {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of every text (see [`encode`](Self::encode)).
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, VitError> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// Number of tokens, added tokens included.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of the start-of-text token.
    #[must_use]
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Id of the end-of-text token.
    #[must_use]
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Id of the padding token (CLIP pads with its end-of-text token).
    #[must_use]
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The truncation length, start and end tokens included.
    #[must_use]
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The file or folder the tokenizer was read from.
    #[must_use]
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The underlying `tokenizers` tokenizer.
    #[must_use]
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
