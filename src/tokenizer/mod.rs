//! The model's tokenizer, built from a GGUF's metadata alone (or a Hugging Face tokenizer dir),
//! reproducing transformers' `AutoTokenizer(..., gguf_file=...)` ids, and saved back in HF form
//! for edited-model exports.

mod gguf_build;
mod gguf_meta;

pub use gguf_meta::GgufVocab;

use crate::io::{write_atomic, write_json_atomic};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Content;
use serde_json::{json, Value};
use std::path::Path;

/// A tokenizer plus the special-token facts transformers keeps beside it.
/// BOS/EOS insertion lives in the inner post-processor, so `encode` and a saved
/// `tokenizer.json` agree by construction.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    unk: Option<String>,
    pad: Option<String>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Model(format!("tokenizer {what}: {e}"))
}

impl Tokenizer {
    /// Build from the `tokenizer.*` metadata of a GGUF; `source` names the file in errors.
    pub fn from_gguf(content: &Content, source: &Path) -> Result<Self> {
        let vocab = GgufVocab::read(content, source)?;
        let inner = gguf_build::build(&vocab, source)?;
        // transformers defaults `add_bos_token` to true for sentencepiece ("llama") vocabularies.
        let add_bos = vocab.add_bos.unwrap_or(vocab.model == "llama");
        let add_eos = vocab.add_eos.unwrap_or(false);
        let named = |id: Option<u32>| vocab.token(id).zip(id);
        let mut tk = Self {
            inner,
            bos: named(vocab.bos_id),
            eos: named(vocab.eos_id),
            unk: vocab.token(vocab.unk_id),
            pad: vocab.token(vocab.pad_id),
            add_bos,
            add_eos,
        };
        tk.set_post_processor()
            .map_err(|e| Error::file(source, e.to_string()))?;
        Ok(tk)
    }

    /// Load `tokenizer.json`; `tokenizer_config.json`, when present, supplies the special
    /// tokens and, when it states `add_bos_token`/`add_eos_token`, overrides the post-processor
    /// (as transformers does).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let json_path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&json_path)
            .map_err(|e| Error::file(&json_path, e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| Error::file(&cfg_path, e.to_string()))?;
            serde_json::from_str(&text).map_err(|e| Error::file(&cfg_path, e.to_string()))?
        } else {
            json!({})
        };
        let name = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let with_id = |t: Option<String>| t.and_then(|t| inner.token_to_id(&t).map(|id| (t, id)));
        let flag = |key: &str| -> Result<Option<bool>> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(Error::file(&cfg_path, format!("`{key}` is not a boolean"))),
            }
        };
        let (add_bos_cfg, add_eos_cfg) = (flag("add_bos_token")?, flag("add_eos_token")?);
        let mut tk = Self {
            bos: with_id(name("bos_token")),
            eos: with_id(name("eos_token")),
            unk: name("unk_token"),
            pad: name("pad_token"),
            add_bos: add_bos_cfg.unwrap_or(false),
            add_eos: add_eos_cfg.unwrap_or(false),
            inner,
        };
        if add_bos_cfg.is_some() || add_eos_cfg.is_some() || tk.inner.get_post_processor().is_none()
        {
            tk.set_post_processor()
                .map_err(|e| Error::file(&cfg_path, e.to_string()))?;
        } else {
            // The saved post-processor decides; read back what it does.
            let probe = tk.inner.encode("", true).map_err(|e| tk_err("encode", e))?;
            let ids = probe.get_ids();
            tk.add_bos = matches!((ids.first(), &tk.bos), (Some(f), Some((_, b))) if f == b);
            tk.add_eos = matches!((ids.last(), &tk.eos), (Some(l), Some((_, e))) if l == e);
        }
        Ok(tk)
    }

    /// transformers' `update_post_processor`: BOS/EOS around each sequence as flagged.
    fn set_post_processor(&mut self) -> Result<()> {
        self.add_bos &= self.bos.is_some();
        self.add_eos &= self.eos.is_some();
        fn pick(on: bool, t: &Option<(String, u32)>) -> Option<(&str, u32)> {
            t.as_ref().filter(|_| on).map(|(s, i)| (s.as_str(), *i))
        }
        let template =
            gguf_build::template(pick(self.add_bos, &self.bos), pick(self.add_eos, &self.eos))
                .map_err(|e| tk_err("post-processor", e))?;
        self.inner.with_post_processor(Some(template));
        Ok(())
    }

    /// Ids as `AutoTokenizer(text)["input_ids"]` gives them (BOS when the model adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tk_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids without any special tokens added.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tk_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of ids, special tokens kept (transformers' default).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tk_err("decode", e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.1)
    }

    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.1)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer (for offsets or batch encoding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Write tokenizer.json, tokenizer_config.json and special_tokens_map.json so that
    /// `transformers.AutoTokenizer.from_pretrained(dir)` gives the same ids.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| tk_err("serialise", e))?;
        write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
        let specials = json!({
            "bos_token": self.bos.as_ref().map(|b| &b.0),
            "eos_token": self.eos.as_ref().map(|e| &e.0),
            "unk_token": self.unk,
            "pad_token": self.pad,
        });
        let mut config = specials.clone();
        if let Value::Object(map) = &mut config {
            map.insert("tokenizer_class".into(), json!("TokenizersBackend"));
            map.insert("backend".into(), json!("tokenizers"));
            map.insert("add_bos_token".into(), json!(self.add_bos));
            map.insert("add_eos_token".into(), json!(self.add_eos));
        }
        write_json_atomic(&dir.join("tokenizer_config.json"), &config)?;
        write_json_atomic(&dir.join("special_tokens_map.json"), &specials)
    }

    /// The one id of `text` as a continuation (e.g. " he"); an error naming the text otherwise.
    pub fn single_token_id(&self, text: &str) -> Result<u32> {
        match self.encode_plain(text)?[..] {
            [id] => Ok(id),
            ref ids => Err(Error::param(
                "word",
                format!(
                    "{text:?} is not a single token (it encodes to {} tokens: {ids:?})",
                    ids.len()
                ),
            )),
        }
    }
}
