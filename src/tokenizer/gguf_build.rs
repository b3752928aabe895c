//! Build a `tokenizers::Tokenizer` from GGUF vocabulary metadata the way transformers' GGUF
//! conversion does (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`, v5.24): that
//! conversion is what the reference ids come from, so its choices are the spec here.
//!
//! * `gpt2` model: GPT-2 byte-level BPE with the file's merges; tokens not spelled in the byte
//!   alphabet are respelled from their UTF-8 bytes; a known `tokenizer.ggml.pre` swaps in its split regex.
//! * `llama` model on a Gemma architecture: BPE with byte fallback. Tokens made only of blanks
//!   are respelled as that many `▁`; the file has no merges, so every split of a token into two
//!   vocabulary tokens becomes a merge, ranked by the token's position in the file (earlier first),
//!   then by longer left part. Spaces become `▁` in a normalizer; no prefix space.
//! * Control tokens become special added tokens, user-defined ones plain added tokens.

use super::gguf_meta::{GgufVocab, TOKEN_CONTROL, TOKEN_USER_DEFINED};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// Build the tokenizer (without post-processor; the caller adds BOS/EOS handling).
pub fn build(vocab: &GgufVocab, source: &Path) -> Result<tokenizers::Tokenizer> {
    let err = |e: String| Error::file(source, e);
    let mut tk = match vocab.model.as_str() {
        "gpt2" => byte_level(vocab, source)?,
        "llama" if is_gemma(&vocab.architecture) => gemma(vocab, source)?,
        other => {
            return Err(err(format!(
                "GGUF key `tokenizer.ggml.model` = {other:?} (architecture {:?}) is not supported; \
                 supported: \"gpt2\", and \"llama\" on gemma/gemma2/gemma3",
                vocab.architecture
            )))
        }
    };
    add_typed_tokens(&mut tk, vocab);
    if vocab.model == "gpt2" {
        if let Some(regex) = vocab.pre.as_deref().and_then(split_regex) {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(format!("split regex for `tokenizer.ggml.pre`: {e}")))?;
            let bytes = ByteLevel::new(false, true, false);
            tk.with_pre_tokenizer(Some(PreSequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(bytes),
            ])));
        }
    }
    Ok(tk)
}

/// Architectures whose sentencepiece vocabulary transformers converts with its Gemma rules.
fn is_gemma(arch: &str) -> bool {
    matches!(arch, "gemma" | "gemma2" | "gemma3")
}

/// GPT-2's byte → printable character table (bytes_to_unicode).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

fn byte_level(vocab: &GgufVocab, source: &Path) -> Result<tokenizers::Tokenizer> {
    let table = byte_alphabet();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let spelled: Vec<String> = vocab
        .tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        })
        .collect();
    let merges = vocab
        .merges
        .as_ref()
        .ok_or_else(|| Error::file(source, "GGUF key `tokenizer.ggml.merges`: missing (a gpt2 vocabulary needs it)"))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(Error::file(
                source,
                format!("GGUF key `tokenizer.ggml.merges`[{i}] = {m:?}: not two tokens separated by one space"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(GgufVocab::index::<Vocab>(spelled), merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| Error::file(source, format!("GGUF byte-level BPE: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevel::new(true, true, true)));
    Ok(tk)
}

fn gemma(vocab: &GgufVocab, source: &Path) -> Result<tokenizers::Tokenizer> {
    let spelled: Vec<String> = vocab
        .tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let merges = merges_by_position(&spelled);
    let unk = vocab
        .token(vocab.unk_id)
        .unwrap_or_else(|| "<unk>".to_string());
    let ids: Vocab = GgufVocab::index(spelled);
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| Error::file(source, format!("GGUF sentencepiece BPE: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let blank = Replace::new(" ", "\u{2581}").map_err(|e| Error::file(source, e.to_string()))?;
    tk.with_normalizer(Some(blank));
    let split = Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
        .map_err(|e| Error::file(source, e.to_string()))?;
    tk.with_pre_tokenizer(Some(split));
    let unblank = Replace::new("\u{2581}", " ").map_err(|e| Error::file(source, e.to_string()))?;
    tk.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(unblank),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    Ok(tk)
}

/// Merges implied by a vocabulary without merges: each split of a token into two vocabulary
/// tokens, ranked by the token's (last) position in the file, then longer left part first.
fn merges_by_position(tokens: &[String]) -> Vec<(String, String)> {
    let ids: HashMap<&str, u32, FastHash> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    // (rank, byte offset of the cut, token index); strings are only allocated once ranked.
    let mut ranked: Vec<(u32, u32, u32)> = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let rank = ids[token.as_str()];
        if rank != index as u32 {
            continue; // a repeated token yields its merges once, at its last position
        }
        for (cut, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(cut);
            if ids.contains_key(left) && ids.contains_key(right) {
                ranked.push((rank, cut as u32, index as u32));
            }
        }
    }
    // Byte offset and character count order the cuts of one token alike.
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    ranked
        .into_iter()
        .map(|(_, cut, index)| {
            let (l, r) = tokens[index as usize].split_at(cut as usize);
            (l.to_string(), r.to_string())
        })
        .collect()
}

/// A multiply-rotate string hash (FxHash's scheme): SipHash made the 2M+ substring look-ups of
/// `merges_by_position` dominate building a 262k-token tokenizer. Keys are the file's own tokens.
#[derive(Default, Clone, Copy)]
struct FastHash;

#[derive(Default)]
struct FastHasher(u64);

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Control tokens as special added tokens, user-defined ones (e.g. "\n\n") as plain added tokens,
/// so both are matched whole in text; neither is normalized.
fn add_typed_tokens(tk: &mut tokenizers::Tokenizer, vocab: &GgufVocab) {
    let byte_level = vocab.model == "gpt2";
    let alphabet: HashSet<char> = byte_alphabet().into_iter().collect();
    let typed = |kind: i32| {
        vocab
            .tokens
            .iter()
            .zip(&vocab.token_types)
            .filter(move |(_, t)| **t == kind)
            .map(|(tok, _)| tok)
    };
    // A byte-level control token outside the byte alphabet is a llama.cpp mislabel: skip it.
    let control: Vec<AddedToken> = typed(TOKEN_CONTROL)
        .filter(|t| !byte_level || t.chars().all(|c| alphabet.contains(&c)))
        .map(|t| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    if !control.is_empty() {
        tk.add_special_tokens(&control);
    }
    let user: Vec<AddedToken> = typed(TOKEN_USER_DEFINED)
        .filter(|t| tk.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    if !user.is_empty() {
        tk.add_tokens(&user);
    }
}

/// The post-processor transformers sets from `add_bos_token` / `add_eos_token`.
pub fn template(
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
) -> std::result::Result<TemplateProcessing, String> {
    let mut single = String::new();
    let mut pair_b = String::new();
    let mut specials = Vec::new();
    if let Some((b, id)) = bos {
        single.push_str(&format!("{b}:0 "));
        pair_b.push_str(&format!(" {b}:1"));
        specials.push((b.to_string(), id));
    }
    single.push_str("$A:0");
    pair_b.push_str(" $B:1");
    if let Some((e, id)) = eos {
        single.push_str(&format!(" {e}:0"));
        pair_b.push_str(&format!(" {e}:1"));
        specials.push((e.to_string(), id));
    }
    let pair = format!("{single}{pair_b}");
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| e.to_string())?
        .special_tokens(specials)
        .build()
        .map_err(|e| e.to_string())
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` name; `None` keeps GPT-2's.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}
