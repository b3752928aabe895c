//! The language-model interface the scorers need, and lm-evaluation-harness's request encoding
//! (context/continuation split, left truncation, rolling windows) on top of it.

use crate::{Error, Result};

/// One scoring request in token ids: log p(continuation | context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Answer to one [`LlRequest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlResult {
    /// Sum over continuation tokens of log p(token | everything before it), natural log.
    pub logprob: f64,
    /// Whether every continuation token is the argmax under teacher forcing.
    pub is_greedy: bool,
    /// Number of continuation tokens scored.
    pub n_tokens: usize,
}

/// What the benchmark layer needs from a model. Implementations receive all requests of a task
/// at once so they can batch and share prefixes; they must return one result per request, in
/// order. Requests already fit `max_length() + 1` tokens (context + continuation) because
/// [`encode_pair`] and [`rolling_windows`] left-truncate the context as lm-eval does.
pub trait LanguageModel {
    /// Tokenize with the model's special-token handling as HF does (e.g. Gemma prepends BOS).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>>;
    /// Tokenize without any special tokens.
    fn tokenize_plain(&self, text: &str) -> Result<Vec<u32>>;
    fn bos_id(&self) -> Option<u32>;
    fn eos_id(&self) -> Option<u32>;
    /// log p(continuation | context) summed over continuation tokens, and whether each
    /// continuation token is the argmax.
    fn loglikelihood(&mut self, requests: &[LlRequest]) -> Result<Vec<LlResult>>;
    /// Longest input sequence the model accepts.
    fn max_length(&self) -> usize;
    /// Which scorer's bits these are, for the request cache: "" for the default (the fused
    /// kernels), a name for a scorer whose last bits differ (candle's composed ops, the
    /// CPU-independent path the report's snapshots rely on), so the cache never hands one
    /// scorer's results to another.
    fn cache_scope(&self) -> &'static str {
        ""
    }
}

/// The token lm-eval puts in front of an empty context (HFLM `prefix_token_id`): BOS, else EOS.
pub fn prefix_token(lm: &dyn LanguageModel) -> Result<u32> {
    lm.bos_id()
        .or_else(|| lm.eos_id())
        .ok_or_else(|| Error::Model("model has neither a BOS nor an EOS token".into()))
}

/// Encode a (context, continuation) string pair the way lm-eval's HFLM does: trailing
/// whitespace of the context moves to the continuation; the continuation ids are
/// `tokenize(context + continuation)[len(tokenize(context))..]`, so merges across the boundary
/// follow the tokenizer. An empty context becomes the prefix token (BOS, else EOS) and the
/// continuation is tokenized without special tokens. The context is left-truncated so the
/// pair fits `max_length + 1` tokens.
pub fn encode_pair(lm: &dyn LanguageModel, context: &str, continuation: &str) -> Result<LlRequest> {
    let (context_enc, continuation_enc) = if context.is_empty() {
        (vec![prefix_token(lm)?], lm.tokenize_plain(continuation)?)
    } else {
        let trimmed = context.trim_end();
        let moved = &context[trimmed.len()..];
        let cont = format!("{moved}{continuation}");
        let whole = lm.tokenize(&format!("{trimmed}{cont}"))?;
        let ctx = lm.tokenize(trimmed)?;
        let split = ctx.len().min(whole.len());
        (ctx, whole[split..].to_vec())
    };
    if continuation_enc.is_empty() {
        return Err(Error::Model(format!(
            "continuation {continuation:?} encodes to no tokens after context {context:?}"
        )));
    }
    truncate_left(
        LlRequest {
            context: context_enc,
            continuation: continuation_enc,
        },
        lm.max_length(),
    )
}

/// Keep the last `max_length + 1` tokens of context + continuation, as lm-eval slices its
/// inputs. A continuation that alone exceeds `max_length` cannot be scored.
pub fn truncate_left(mut req: LlRequest, max_length: usize) -> Result<LlRequest> {
    if req.continuation.len() > max_length {
        return Err(Error::Model(format!(
            "continuation of {} tokens exceeds max_length {max_length}",
            req.continuation.len()
        )));
    }
    let total = req.context.len() + req.continuation.len();
    if total > max_length + 1 {
        let drop = total - (max_length + 1);
        req.context.drain(..drop);
    }
    Ok(req)
}

/// lm-eval `get_rolling_token_windows` with `context_len = 1` followed by
/// `make_disjoint_window`: disjoint windows that together predict every token of `tokens`
/// exactly once, the first conditioned on `prefix`.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_length: usize) -> Result<Vec<LlRequest>> {
    if max_length == 0 {
        return Err(Error::param("max_length", "must be at least 1"));
    }
    let mut out = Vec::new();
    if tokens.is_empty() {
        return Ok(out);
    }
    let first = max_length.min(tokens.len());
    let mut ctx = vec![prefix];
    ctx.extend_from_slice(&tokens[..first - 1]);
    out.push(disjoint(ctx, tokens[..first].to_vec()));
    let mut predicted = first;
    while predicted < tokens.len() {
        let pred_len = (tokens.len() - predicted).min(max_length);
        let end = predicted + pred_len;
        let start = end.saturating_sub(max_length + 1);
        let ctx = tokens[start..end - 1].to_vec();
        out.push(disjoint(ctx, tokens[end - pred_len..end].to_vec()));
        predicted = end;
    }
    Ok(out)
}

/// `make_disjoint_window`: drop from the window input the positions that are predicted.
fn disjoint(window_input: Vec<u32>, predicted: Vec<u32>) -> LlRequest {
    let keep = window_input.len() + 1 - predicted.len();
    LlRequest {
        context: window_input[..keep].to_vec(),
        continuation: predicted,
    }
}

/// Log-likelihood of a whole text and its token count (lm-eval `loglikelihood_rolling`):
/// the text is tokenized without special tokens, the prefix token (BOS, else EOS) conditions
/// the first token, and windows of `max_length` tokens are scored in one model call.
pub fn loglikelihood_rolling(
    lm: &mut dyn LanguageModel,
    texts: &[String],
) -> Result<Vec<(f64, usize)>> {
    let prefix = prefix_token(lm)?;
    let max_length = lm.max_length();
    let mut requests = Vec::new();
    let mut owner = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let tokens = lm.tokenize_plain(text)?;
        for w in rolling_windows(&tokens, prefix, max_length)? {
            requests.push(w);
            owner.push(i);
        }
    }
    let results = checked_loglikelihood(lm, &requests)?;
    let mut out = vec![(0.0, 0usize); texts.len()];
    for (r, &i) in results.iter().zip(&owner) {
        out[i].0 += r.logprob;
        out[i].1 += r.n_tokens;
    }
    Ok(out)
}

/// Call the model and check that it answered every request.
pub fn checked_loglikelihood(
    lm: &mut dyn LanguageModel,
    requests: &[LlRequest],
) -> Result<Vec<LlResult>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let results = lm.loglikelihood(requests)?;
    if results.len() != requests.len() {
        return Err(Error::Model(format!(
            "loglikelihood returned {} results for {} requests",
            results.len(),
            requests.len()
        )));
    }
    if let Some(r) = results.iter().find(|r| !r.logprob.is_finite()) {
        return Err(Error::Numerical(format!(
            "non-finite log-likelihood {}",
            r.logprob
        )));
    }
    Ok(results)
}
