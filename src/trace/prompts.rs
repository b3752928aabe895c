//! From occupation prompts to trace cases: token ids, the occupation's token span, pronoun ids.

use super::TraceCase;
use crate::data::OccupationPrompt;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Ids of " he", " she", " they" (each must be one token).
pub fn pronoun_ids(tok: &Tokenizer) -> Result<[u32; 3]> {
    Ok([tok.single_token_id(" he")?, tok.single_token_id(" she")?, tok.single_token_id(" they")?])
}

/// Token ids of `template` filled with `name` and the `[b, e)` span of the name's tokens: `b` is
/// the length of the encoded text before the slot, `e` that of the text up to the name's end.
/// An error when the tokenisation of the prefix is not a prefix of the whole prompt's.
pub fn subject_span(tok: &Tokenizer, template: &str, name: &str) -> Result<(Vec<u32>, (usize, usize))> {
    let (before, _) = template.split_once("{}").ok_or_else(|| Error::param("template", format!("{template:?} has no `{{}}`")))?;
    let full = tok.encode(&template.replacen("{}", name, 1))?;
    let pre = tok.encode(before.trim_end())?;
    let upto = tok.encode(&format!("{before}{name}"))?;
    let (b, e) = (pre.len(), upto.len());
    if b >= e || e > full.len() || full[..b] != pre[..] || full[..e] != upto[..] {
        return Err(Error::param("prompt", format!("cannot locate {name:?} in the tokens of {template:?}")));
    }
    Ok((full, (b, e)))
}

/// The trace case of one occupation prompt.
pub fn trace_case(tok: &Tokenizer, p: &OccupationPrompt, pronouns: [u32; 3]) -> Result<TraceCase> {
    let (ids, subject) = subject_span(tok, &p.template, &p.name)?;
    Ok(TraceCase { ids, subject, pronouns })
}

/// `n` prompts drawn without replacement by a seeded shuffle (all of them when `n` is larger),
/// so that a small run still covers many professions and templates.
pub fn select_prompts(all: &[OccupationPrompt], n: usize, seed: u64) -> Vec<OccupationPrompt> {
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    idx.truncate(n);
    idx.into_iter().map(|i| all[i].clone()).collect()
}
