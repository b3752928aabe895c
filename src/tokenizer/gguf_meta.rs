//! The tokenizer part of a GGUF's metadata (llama.cpp key names), read once and checked, so the
//! builders work on plain vectors and every error names the file and the key at fault.

use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;

/// Everything the converters need from `tokenizer.*` and `general.architecture`.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub architecture: String,
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE), "llama" (sentencepiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer split of byte-level vocabularies.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

impl GgufVocab {
    /// Read and validate; `source` only names the file in errors.
    pub fn read(content: &Content, source: &Path) -> Result<Self> {
        let md = &content.metadata;
        let bad = |key: &str, why: &str| Error::file(source, format!("GGUF key `{key}`: {why}"));
        let need = |key: &str| {
            md.get(key).ok_or_else(|| {
                bad(
                    key,
                    "missing (the file carries no tokenizer metadata, or not this key)",
                )
            })
        };
        let string = |key: &str, v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(key, "not a string")),
        };
        let strings = |key: &str, v: &Value| match v {
            Value::Array(items) => items
                .iter()
                .map(|x| string(key, x))
                .collect::<Result<Vec<_>>>(),
            _ => Err(bad(key, "not an array of strings")),
        };

        let model = string("tokenizer.ggml.model", need("tokenizer.ggml.model")?)?;
        let tokens = strings("tokenizer.ggml.tokens", need("tokenizer.ggml.tokens")?)?;
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "empty vocabulary"));
        }
        let architecture = match md.get("general.architecture") {
            Some(v) => string("general.architecture", v)?,
            None => String::new(),
        };
        let pre = md
            .get("tokenizer.ggml.pre")
            .map(|v| string("tokenizer.ggml.pre", v))
            .transpose()?;
        let merges = md
            .get("tokenizer.ggml.merges")
            .map(|v| strings("tokenizer.ggml.merges", v))
            .transpose()?;
        let token_types = match md.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let types = items
                    .iter()
                    .map(|x| integer(x).map(|t| t as i32))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("tokenizer.ggml.token_type", "not an array of integers"))?;
                if types.len() != tokens.len() {
                    return Err(bad(
                        "tokenizer.ggml.token_type",
                        &format!("{} entries for {} tokens", types.len(), tokens.len()),
                    ));
                }
                types
            }
            Some(_) => return Err(bad("tokenizer.ggml.token_type", "not an array")),
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => match integer(v) {
                    Some(i) if (0..tokens.len() as i64).contains(&i) => Ok(Some(i as u32)),
                    _ => Err(bad(key, "not a token id inside the vocabulary")),
                },
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match md.get(key) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(bad(key, "not a boolean")),
            }
        };
        Ok(Self {
            architecture,
            model,
            pre,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            tokens,
            token_types,
            merges,
        })
    }

    /// The text of a token id, if it has one.
    pub fn token(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|i| self.tokens.get(i as usize).cloned())
    }

    /// Token → id; a token listed twice keeps its last id, as a Python dict built from the list does.
    pub fn index<M: FromIterator<(String, u32)>>(tokens: Vec<String>) -> M {
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect()
    }
}

/// Any GGUF integer as i64 (files differ in which width they use for ids and types).
fn integer(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}
