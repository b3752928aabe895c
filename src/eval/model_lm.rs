//! [`LanguageModel`] on the real transformer, built for throughput and bounded memory.
//!
//! * Exact prefix sharing: a request's model input is `(context ++ continuation)[..len-1]`. When
//!   that input is a prefix of another request's input, causality makes the logits at its
//!   positions identical in the longer row, so both are read from one row. Sorting the inputs
//!   lexicographically puts every such pair next to each other. This runs a context once for
//!   one-token choices (BoolQ " yes"/" no", WinoBias referents) and removes duplicate requests;
//!   choices with different multi-token continuations stay separate rows in the same batch.
//! * Shared-prefix packing: requests whose inputs share at least `pack_min_shared` leading
//!   tokens (the choices of one item, BoolQ questions on one passage) are packed into one row
//!   as a token trie ([`TreeRow`]): the shared tokens run once, each branch attends to its own
//!   ancestors at its own positions, so the numbers are those of separate rows.
//! * Rows are filled with several packs up to `row_tokens` (best fit), as a forest: each pack
//!   attends to itself only, and rows of nearly equal length leave almost no padding.
//! * Batches: rows sorted by length (longest first, so an out-of-memory shows at once) and cut
//!   so `rows × padded length` stays under a token budget; left padding is masked.
//! * Only the continuation positions are unembedded: the forward returns the final-norm states,
//!   the needed positions are gathered (each distinct position once) and projected onto the
//!   vocabulary in chunks of at most `logit_floats / vocab` positions, so Gemma's 262k vocabulary
//!   never materialises for a whole batch. Only the requested tokens' log-probabilities and the
//!   argmax are read (`model::fused::token_log_probs`: max, f64 normaliser, no log-softmax
//!   tensor); candle's composed path is the transformer's own `log_softmax_accurate`, whose
//!   numbers equal `LogitsRequest::Positions`.

use crate::eval::lm::{LanguageModel, LlRequest, LlResult};
use crate::model::fused;
use crate::model::matmul::x_wt;
use crate::model::{InterventionPlan, Model, Site, Transformer, TreeRow};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Batching and memory knobs; the defaults suit a laptop CPU and a 24 GiB GPU alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmOptions {
    /// Upper bound on `rows × padded tokens` of one forward.
    pub batch_tokens: usize,
    /// Longest input accepted (lm-eval `max_length`); capped by the model's positions.
    pub max_length: usize,
    /// Upper bound on floats of one logits chunk (`positions × vocab`).
    pub logit_floats: usize,
    /// Longest packed row of requests sharing a prefix; 0 runs every request as its own row
    /// (and is what records written before packing existed read as).
    #[serde(default)]
    pub pack_tokens: usize,
    /// Fewest shared leading tokens for two requests to be packed into one row.
    #[serde(default)]
    pub pack_min_shared: usize,
    /// Rows are filled with several packed requests up to this many tokens (less padding, more
    /// masked attention); 0 keeps one pack per row.
    #[serde(default)]
    pub row_tokens: usize,
    /// The fused CPU kernels (`Transformer::fast_kernels`: AVX-512 projections and
    /// unembedding, fused attention, one-pass SwiGLU and RMS norm) where the CPU has them;
    /// numbers differ from candle's composed ops only by rounding.
    #[serde(default, alias = "fast_matmul")]
    pub fast_kernels: bool,
    /// Batches scored at once on separate threads (1: one after the other).
    #[serde(default)]
    pub parallel_batches: usize,
    /// How the fused path multiplies the projections: f32, or compensated bf16 (`mkl` builds;
    /// `model::bf16x3`). Left out of records when f32, so existing cache keys stay.
    #[serde(default, skip_serializing_if = "Products::is_f32")]
    pub products: Products,
}

/// The arithmetic of the eval path's projection products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Products {
    /// f32 products (MKL's sgemm in `mkl` builds): the reference.
    #[default]
    F32,
    /// Three bf16 products with f32 accumulation per f32 product (about 2⁻¹⁸ relative error
    /// instead of 2⁻²⁴), several times faster on CPUs with AMX; needs the `mkl` feature. The
    /// unembedding stays f32.
    Bf16x3,
}

impl Products {
    /// The spelling in records and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Products::F32 => "f32",
            Products::Bf16x3 => "bf16x3",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Products::F32
    }
}

impl std::str::FromStr for Products {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "products",
            s,
            &[Products::F32, Products::Bf16x3],
            Products::name,
        )
    }
}

impl Default for LmOptions {
    fn default() -> Self {
        LmOptions {
            batch_tokens: 4096,
            max_length: 2048,
            logit_floats: 1 << 24,
            pack_tokens: 128,
            pack_min_shared: 4,
            row_tokens: 128,
            fast_kernels: true,
            parallel_batches: 2,
            products: Products::F32,
        }
    }
}

/// The real model as a [`LanguageModel`].
pub struct ModelLm<'a> {
    model: &'a Model,
    /// The model's transformer (shared weights) with this scorer's matmul choice.
    transformer: Transformer,
    tokenizer: Option<&'a Tokenizer>,
    opts: LmOptions,
}

impl<'a> ModelLm<'a> {
    /// Wrap a loaded model; tokenizer-less models (tiny test models) can still score ids.
    pub fn new(model: &'a Model, opts: LmOptions) -> Result<Self> {
        if opts.batch_tokens == 0 || opts.max_length == 0 || opts.logit_floats == 0 {
            return Err(Error::param(
                "lm options",
                "batch_tokens, max_length and logit_floats must be positive",
            ));
        }
        let mut transformer = model.transformer.clone();
        transformer.fast_kernels = opts.fast_kernels;
        if opts.products == Products::Bf16x3 {
            if !cfg!(feature = "mkl") {
                return Err(Error::param(
                    "products",
                    "bf16x3 needs a build with the `mkl` feature (docs/performance.md)",
                ));
            }
            if !opts.fast_kernels {
                return Err(Error::param(
                    "products",
                    "bf16x3 runs on the fused path only (not with candle's composed ops)",
                ));
            }
            transformer.use_bf16x3_products()?;
        }
        Ok(ModelLm {
            model,
            transformer,
            tokenizer: model.tokenizer.as_ref(),
            opts,
        })
    }

    fn tok(&self) -> Result<&Tokenizer> {
        self.tokenizer.ok_or_else(|| {
            Error::Model(format!(
                "model `{}` has no tokenizer: {} is missing",
                self.model.info.name,
                self.model.info.path.join("tokenizer.json").display()
            ))
        })
    }
}

/// One request as the model sees it.
struct Prepared {
    input: Vec<u32>,
    /// Continuation tokens, predicted at the last `targets.len()` input positions.
    targets: Vec<u32>,
}

fn prepare(req: &LlRequest, max_positions: usize) -> Result<Prepared> {
    if req.continuation.is_empty() {
        return Err(Error::param("request", "empty continuation"));
    }
    if req.context.is_empty() {
        return Err(Error::param(
            "request",
            "empty context (lm-eval puts BOS/EOS in front of an empty context)",
        ));
    }
    let mut input = req.context.clone();
    input.extend_from_slice(&req.continuation[..req.continuation.len() - 1]);
    if input.len() > max_positions {
        return Err(Error::param(
            "request",
            format!(
                "{} input tokens exceed max_length {max_positions}",
                input.len()
            ),
        ));
    }
    Ok(Prepared {
        input,
        targets: req.continuation.clone(),
    })
}

/// For each request, the request whose input row it is read from (its own or a longer one
/// that it is a prefix of).
fn assign_hosts(prepared: &[Prepared]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    order.sort_by(|&a, &b| prepared[a].input.cmp(&prepared[b].input).then(a.cmp(&b)));
    let mut host: Vec<usize> = (0..prepared.len()).collect();
    for k in (0..order.len().saturating_sub(1)).rev() {
        let (i, next) = (order[k], order[k + 1]);
        if prepared[next].input.starts_with(&prepared[i].input) {
            host[i] = host[next];
        }
    }
    host
}

/// Host rows packed as tries: consecutive hosts in lexicographic order that share at least
/// `min_shared` leading tokens with their predecessor, while the trie stays within
/// `pack_tokens` tokens or within twice the shared prefix (questions on one long passage)
/// (`pack_tokens == 0`: one host per row). In lexicographic order a
/// string's longest common prefix with any earlier string is the one with its predecessor, so
/// the trie of a run of hosts has `len(first) + Σ (len - lcp with predecessor)` tokens.
fn plan_packs(
    prepared: &[Prepared],
    hosts: &[usize],
    pack_tokens: usize,
    min_shared: usize,
) -> Vec<Pack> {
    let mut rows: Vec<usize> = hosts.to_vec();
    rows.sort_unstable();
    rows.dedup();
    rows.sort_by(|&a, &b| prepared[a].input.cmp(&prepared[b].input).then(a.cmp(&b)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for (k, &r) in rows.iter().enumerate() {
        let len = prepared[r].input.len();
        let shared = match k.checked_sub(1) {
            Some(p) => common_prefix(&prepared[rows[p]].input, &prepared[r].input),
            None => 0,
        };
        let joins = pack_tokens > 0
            && !groups.is_empty()
            && shared >= min_shared.max(1)
            && size + len - shared <= pack_tokens.max(2 * shared);
        if joins {
            size += len - shared;
            if let Some(g) = groups.last_mut() {
                g.push(r);
            }
        } else {
            size = len;
            groups.push(vec![r]);
        }
    }
    groups
        .into_iter()
        .map(|hosts| {
            let seqs: Vec<&[u32]> = hosts
                .iter()
                .map(|&h| prepared[h].input.as_slice())
                .collect();
            let (row, nodes) = TreeRow::pack(&seqs);
            Pack { row, hosts, nodes }
        })
        .collect()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One model row: the trie of its hosts' inputs (or a forest of several tries), and where
/// each host's tokens sit in it.
struct Pack {
    row: TreeRow,
    hosts: Vec<usize>,
    /// `nodes[k][i]`: row index of input token i of `hosts[k]`.
    nodes: Vec<Vec<usize>>,
}

impl Pack {
    /// Append `other` as further trees of this row (a forest: no token of one sees the other).
    fn absorb(&mut self, other: Pack) {
        let shift = self.row.len();
        self.row.tokens.extend(other.row.tokens);
        self.row
            .parent
            .extend(other.row.parent.into_iter().map(|p| p.map(|q| q + shift)));
        self.hosts.extend(other.hosts);
        self.nodes.extend(
            other
                .nodes
                .into_iter()
                .map(|n| n.into_iter().map(|i| i + shift).collect()),
        );
    }
}

/// Fill rows of up to `row_tokens` tokens with whole packs (best fit, longest first), so rows
/// have nearly equal length and a batch carries almost no padding; a pack longer than that is
/// a row of its own. `row_tokens == 0` keeps one pack per row. The price is attention over
/// the whole row (masked), which grows with `row_tokens`.
fn fill_rows(mut packs: Vec<Pack>, row_tokens: usize) -> Vec<Pack> {
    if row_tokens == 0 {
        return packs;
    }
    packs.sort_by_key(|p| std::cmp::Reverse(p.row.len()));
    let mut rows: Vec<Pack> = Vec::new();
    // Free space → rows with exactly that much room left.
    let mut room: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for pack in packs {
        let len = pack.row.len();
        let fit = room.range_mut(len..).next().and_then(|(&free, list)| {
            let r = list.pop()?;
            Some((free, r, list.is_empty()))
        });
        match fit {
            Some((free, r, emptied)) => {
                if emptied {
                    room.remove(&free);
                }
                rows[r].absorb(pack);
                room.entry(free - len).or_default().push(r);
            }
            None => {
                rows.push(pack);
                if len < row_tokens {
                    room.entry(row_tokens - len)
                        .or_default()
                        .push(rows.len() - 1);
                }
            }
        }
    }
    rows
}

/// Rows grouped into batches under the token budget (`rows × padded length`), longest first.
fn plan_batches(packs: &[Pack], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..packs.len()).collect();
    order.sort_by(|&a, &b| packs[b].row.len().cmp(&packs[a].row.len()).then(a.cmp(&b)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut width = 0;
    for r in order {
        let len = packs[r].row.len();
        let w = width.max(len);
        if !cur.is_empty() && (cur.len() + 1) * w > budget {
            batches.push(std::mem::take(&mut cur));
            width = 0;
        }
        width = width.max(len);
        cur.push(r);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// One scored continuation token: (request, log-probability, greedy).
type Scored = (usize, f64, bool);

impl ModelLm<'_> {
    /// Score the requests hosted by one batch of rows; accumulate into `out`.
    /// Returns one `(request, log-probability, greedy)` per continuation token scored.
    fn run_batch(
        &self,
        prepared: &[Prepared],
        packs: &[&Pack],
        guests: &HashMap<usize, Vec<usize>>,
    ) -> Result<Vec<(usize, f64, bool)>> {
        let t = &self.transformer;
        let mut scored = Vec::new();
        let trees: Vec<TreeRow> = packs.iter().map(|p| p.row.clone()).collect();
        // Rows are left-padded to the longest; a token's column is its pad plus its index.
        let width = trees.iter().map(TreeRow::len).max().unwrap_or(0);
        // Per row, the distinct columns read and, per column, the (request, target) pairs read
        // there; the last layer runs at these columns only (`InterventionPlan::read_at`).
        let mut cols: Vec<Vec<usize>> = vec![Vec::new(); packs.len()];
        let mut slot_of: HashMap<(usize, usize), usize> = HashMap::new();
        let mut reads: Vec<Vec<(usize, u32)>> = Vec::new();
        let mut slots: Vec<(usize, usize)> = Vec::new();
        let reads_of = packs.iter().enumerate().flat_map(|(row, pack)| {
            pack.hosts
                .iter()
                .zip(&pack.nodes)
                .map(move |(host, nodes)| (row, host, nodes))
        });
        for (row, host, nodes) in reads_of {
            let pad = width - packs[row].row.len();
            for &req in guests.get(host).map(Vec::as_slice).unwrap_or(&[]) {
                let p = &prepared[req];
                let start = p.input.len() + 1 - p.targets.len();
                for (j, &target) in p.targets.iter().enumerate() {
                    let col = pad + nodes[start - 1 + j];
                    let slot = *slot_of.entry((row, col)).or_insert_with(|| {
                        slots.push((row, cols[row].len()));
                        cols[row].push(col);
                        reads.push(Vec::new());
                        reads.len() - 1
                    });
                    reads[slot].push((req, target));
                }
            }
        }
        // Every row reads as many columns as the busiest one: the others repeat their last.
        let per_row = cols.iter().map(Vec::len).max().unwrap_or(0).max(1);
        for c in cols.iter_mut() {
            let last = c.last().copied().unwrap_or(width - 1);
            c.resize(per_row, last);
        }
        let plan = InterventionPlan::default()
            .with_capture([Site::FinalNorm])
            .reading_at(cols);
        let fwd = t.forward_tree(&trees, &plan)?;
        let states = fwd
            .captures
            .get(&Site::FinalNorm)
            .ok_or_else(|| Error::Model("forward did not capture the final norm".into()))?;
        let (b, _, d) = states.dims3()?;
        let flat: Vec<u32> = slots
            .iter()
            .map(|&(row, j)| (row * per_row + j) as u32)
            .collect();
        let n = flat.len();
        let gathered = states
            .reshape((b * per_row, d))?
            .index_select(&Tensor::from_vec(flat, n, &t.device)?, 0)?;
        let vocab = t.cfg.vocab_size;
        let chunk = (self.opts.logit_floats / vocab).max(1);
        for c0 in (0..n).step_by(chunk) {
            let c = chunk.min(n - c0);
            let logits = x_wt(&gathered.narrow(0, c0, c)?, &t.lm_head, t.fast_kernels)?;
            let reads = &reads[c0..c0 + c];
            let tokens: Vec<Vec<u32>> = reads
                .iter()
                .map(|r| r.iter().map(|&(_, target)| target).collect())
                .collect();
            let fused = if t.fast_kernels {
                fused::token_log_probs(&logits, &tokens)?
            } else {
                None
            };
            let read = match fused {
                Some(read) => read,
                None => fused::token_log_probs_composed(&logits, &tokens)?,
            };
            for ((r, lps), &greedy) in reads.iter().zip(&read.log_probs).zip(&read.argmax) {
                for (&(req, target), &lp) in r.iter().zip(lps) {
                    scored.push((req, f64::from(lp), greedy == target));
                }
            }
        }
        Ok(scored)
    }
}

impl LanguageModel for ModelLm<'_> {
    fn cache_scope(&self) -> &'static str {
        match (self.opts.fast_kernels, self.opts.products) {
            (false, _) => "composed",
            (true, Products::F32) => "",
            // Its last bits differ from the f32 products': a cache of its own.
            (true, Products::Bf16x3) => "bf16x3",
        }
    }
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tok()?.encode(text)
    }
    fn tokenize_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.tok()?.encode_plain(text)
    }
    fn bos_id(&self) -> Option<u32> {
        self.tokenizer
            .and_then(|t| t.bos_id())
            .or(self.model.transformer.cfg.bos_token_id)
    }
    fn eos_id(&self) -> Option<u32> {
        self.tokenizer
            .and_then(|t| t.eos_id())
            .or(self.model.transformer.cfg.eos_token_id)
    }
    fn max_length(&self) -> usize {
        self.opts
            .max_length
            .min(self.model.transformer.cfg.max_positions)
    }

    fn loglikelihood(&mut self, requests: &[LlRequest]) -> Result<Vec<LlResult>> {
        let max_len = self.max_length();
        let prepared = requests
            .iter()
            .map(|r| prepare(r, max_len))
            .collect::<Result<Vec<_>>>()?;
        let hosts = assign_hosts(&prepared);
        let mut guests: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, &h) in hosts.iter().enumerate() {
            guests.entry(h).or_default().push(i);
        }
        let mut out = vec![
            LlResult {
                logprob: 0.0,
                is_greedy: true,
                n_tokens: 0,
            };
            requests.len()
        ];
        let packs = plan_packs(
            &prepared,
            &hosts,
            self.opts.pack_tokens,
            self.opts.pack_min_shared,
        );
        let packs = fill_rows(packs, self.opts.row_tokens);
        let batches = plan_batches(&packs, self.opts.batch_tokens);
        // `parallel_batches` threads take batches from a shared queue: candle's elementwise
        // ops are single-threaded, so one pass alone leaves cores idle between matmuls, and a
        // queue (unlike groups joined together) never waits for the slower of two. Results are
        // added in batch order, so the sums do not depend on which thread ran what.
        let this: &ModelLm = self;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let scored: Vec<std::sync::Mutex<Option<Result<Vec<Scored>>>>> = batches
            .iter()
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let workers = this.opts.parallel_batches.clamp(1, batches.len().max(1));
        // Joined explicitly, so a panicking worker becomes an error instead of a panic here.
        let panicked = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (prepared, guests, packs, batches) = (&prepared, &guests, &packs, &batches);
                    let (next, scored) = (&next, &scored);
                    scope.spawn(move || loop {
                        let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(batch) = batches.get(b) else {
                            break;
                        };
                        let members: Vec<&Pack> = batch.iter().map(|&i| &packs[i]).collect();
                        let result = this.run_batch(prepared, &members, guests);
                        let failed = result.is_err();
                        if let Ok(mut slot) = scored[b].lock() {
                            *slot = Some(result);
                        }
                        if failed {
                            // Stop handing out work; the error is reported below.
                            next.store(batches.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            // Join every handle (no short-circuit): an unjoined panicked one would panic here.
            handles
                .into_iter()
                .map(|h| h.join().is_err())
                .fold(false, |any, this| any | this)
        });
        if panicked {
            return Err(Error::Model("a scoring thread panicked".into()));
        }
        let mut results = Vec::with_capacity(scored.len());
        for slot in scored {
            let result = slot
                .into_inner()
                .map_err(|_| Error::Model("a scoring thread panicked".into()))?;
            results.push(result);
        }
        // A failed batch stops the queue: report its error before noticing unscored batches.
        for result in results.iter_mut() {
            if let Some(Err(_)) = result {
                if let Some(Err(e)) = result.take() {
                    return Err(e);
                }
            }
        }
        for result in results {
            let scored = result.ok_or_else(|| Error::Model("a batch was not scored".into()))??;
            for (req, logprob, greedy) in scored {
                let o = &mut out[req];
                o.logprob += logprob;
                o.is_greedy &= greedy;
                o.n_tokens += 1;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(input: &[u32]) -> Prepared {
        Prepared {
            input: input.to_vec(),
            targets: vec![0],
        }
    }

    #[test]
    fn prefixes_share_the_longest_row() {
        let prepared = vec![p(&[1, 2]), p(&[1, 2, 3]), p(&[1, 3]), p(&[1, 2]), p(&[1])];
        let hosts = assign_hosts(&prepared);
        assert_eq!(hosts[0], 1);
        assert_eq!(hosts[1], 1);
        assert_eq!(hosts[3], 1);
        assert_eq!(hosts[2], 2);
        // [1] is a prefix of both [1,2,3] and [1,3]; it must land on a row that starts with it.
        assert!(prepared[hosts[4]].input.starts_with(&[1]));
        assert!(hosts[4] == 1 || hosts[4] == 2);
    }

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_row() {
        let prepared: Vec<Prepared> = (1..=10u32).map(|n| p(&vec![n; n as usize])).collect();
        let hosts: Vec<usize> = (0..10).collect();
        let packs = plan_packs(&prepared, &hosts, 0, 4);
        assert_eq!(packs.len(), 10);
        let batches = plan_batches(&packs, 12);
        let mut seen: Vec<usize> = batches
            .iter()
            .flatten()
            .flat_map(|&i| packs[i].hosts.clone())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, hosts);
        for b in &batches {
            let w = b.iter().map(|&r| packs[r].row.len()).max().unwrap_or(0);
            assert!(b.len() == 1 || b.len() * w <= 12, "batch {b:?} over budget");
        }
    }

    #[test]
    fn rows_are_filled_with_whole_packs_within_capacity() {
        let prepared: Vec<Prepared> = (1..=12u32).map(|n| p(&vec![n; n as usize])).collect();
        let hosts: Vec<usize> = (0..12).collect();
        let rows = fill_rows(plan_packs(&prepared, &hosts, 0, 4), 13);
        let mut seen: Vec<usize> = rows.iter().flat_map(|r| r.hosts.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, hosts);
        // 78 tokens in rows of 13: best fit needs exactly 6 (12+1, 11+2, ...).
        assert_eq!(rows.len(), 6);
        for row in &rows {
            assert!(row.row.len() <= 13);
            row.row.validate().unwrap();
            for (h, nodes) in row.hosts.iter().zip(&row.nodes) {
                let got: Vec<u32> = nodes.iter().map(|&n| row.row.tokens[n]).collect();
                assert_eq!(got, prepared[*h].input);
            }
        }
    }

    #[test]
    fn packs_join_shared_prefixes_within_limits() {
        let prepared = vec![
            p(&[1, 2, 3, 4, 5]),
            p(&[1, 2, 3, 4, 6, 7]),
            p(&[1, 2, 9]),
            p(&[1, 2, 3, 4, 8]),
        ];
        let hosts: Vec<usize> = (0..4).collect();
        let packs = plan_packs(&prepared, &hosts, 100, 4);
        // Sorted: [1,2,3,4,5] [1,2,3,4,6,7] [1,2,3,4,8] [1,2,9]; the last shares only 2.
        assert_eq!(packs.len(), 2);
        assert_eq!(packs[0].hosts, vec![0, 1, 3]);
        assert_eq!(packs[0].row.len(), 5 + 2 + 1);
        for (h, nodes) in packs[0].hosts.iter().zip(&packs[0].nodes) {
            let got: Vec<u32> = nodes.iter().map(|&n| packs[0].row.tokens[n]).collect();
            assert_eq!(got, prepared[*h].input);
        }
        // A tight token limit splits a run whose shared part is small...
        let prepared = vec![p(&[1, 2, 3, 4, 5, 5, 5]), p(&[1, 2, 3, 4, 6, 6, 6])];
        let packs = plan_packs(&prepared, &[0, 1], 7, 4);
        assert_eq!(packs.len(), 2);
        // ...unless the shared prefix is at least half the trie (one long passage).
        let long: Vec<u32> = (0..20).collect();
        let q = |tail: u32| {
            let mut v = long.clone();
            v.extend([100 + tail, 200 + tail]);
            p(&v)
        };
        let prepared = vec![q(1), q(2), q(3)];
        let packs = plan_packs(&prepared, &[0, 1, 2], 7, 4);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].row.len(), 20 + 3 * 2);
    }
}
