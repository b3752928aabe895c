//! Token trees: sequences that share prefixes packed into one row, and the attention masks that
//! let each token read exactly what it would read in its own sequence.
//!
//! A multiple-choice item scores `context ++ choice` for every choice; run as separate rows the
//! context is computed once per choice. Packed as a trie (the context once, each choice a
//! branch) every token keeps its own position (its depth) and attends to itself and its
//! ancestors only, so causal attention gives the same numbers as the separate rows while the
//! shared tokens run once. A plain sequence is a chain, the degenerate tree.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// One packed row: `tokens[i]` is the child of `parent[i]` (`None` for a root); parents come
/// before their children, so a prefix of the row is itself a valid tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRow {
    pub tokens: Vec<u32>,
    pub parent: Vec<Option<usize>>,
}

impl TreeRow {
    /// An ordinary sequence.
    pub fn chain(tokens: &[u32]) -> TreeRow {
        TreeRow {
            tokens: tokens.to_vec(),
            parent: chain_parents(tokens.len()),
        }
    }

    /// The trie of `seqs`; also returns, per sequence, the row index of each of its tokens.
    pub fn pack(seqs: &[&[u32]]) -> (TreeRow, Vec<Vec<usize>>) {
        let mut row = TreeRow {
            tokens: Vec::new(),
            parent: Vec::new(),
        };
        let mut child: HashMap<(Option<usize>, u32), usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let mut at = None;
            let mut path = Vec::with_capacity(seq.len());
            for &tok in *seq {
                let next = *child.entry((at, tok)).or_insert_with(|| {
                    row.tokens.push(tok);
                    row.parent.push(at);
                    row.tokens.len() - 1
                });
                path.push(next);
                at = Some(next);
            }
            nodes.push(path);
        }
        (row, nodes)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Each token's position in its own sequence (its depth in the tree).
    pub fn positions(&self) -> Vec<usize> {
        depths(&self.parent)
    }

    /// Parents must precede children and the token lists must agree in length.
    pub fn validate(&self) -> Result<()> {
        if self.parent.len() != self.tokens.len() {
            return Err(Error::param(
                "tree row",
                format!(
                    "{} parents for {} tokens",
                    self.parent.len(),
                    self.tokens.len()
                ),
            ));
        }
        for (i, p) in self.parent.iter().enumerate() {
            if p.is_some_and(|q| q >= i) {
                return Err(Error::param(
                    "tree row",
                    format!("token {i} has parent {p:?}, which does not precede it"),
                ));
            }
        }
        Ok(())
    }
}

/// Parents of an ordinary sequence of `len` tokens: each token's parent is the one before it.
pub fn chain_parents(len: usize) -> Vec<Option<usize>> {
    (0..len).map(|i| i.checked_sub(1)).collect()
}

/// Depth of every node of a parent list whose parents precede their children.
pub fn depths(parent: &[Option<usize>]) -> Vec<usize> {
    let mut pos = Vec::with_capacity(parent.len());
    for p in parent {
        pos.push(p.map_or(0, |q: usize| pos[q] + 1));
    }
    pos
}

/// Additive mask [rows, 1, queries, keys] for left-padded rows: a query sees the keys that are
/// its ancestors or itself (for chains: every earlier token) within `window` positions; padding
/// queries see themselves only (their outputs are never read). With `past` keys in front
/// (`keys > queries`, resumed passes, chains only) query i is token `keys - queries + i`.
pub fn attention_mask(
    parents: &[Vec<Option<usize>>],
    pads: &[usize],
    queries: usize,
    keys: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    if pads.len() != parents.len() || queries > keys {
        return Err(Error::param(
            "attention mask",
            format!(
                "{} rows with {} pads, {queries} queries over {keys} keys",
                parents.len(),
                pads.len()
            ),
        ));
    }
    let (b, q0) = (parents.len(), keys - queries);
    let mut m = vec![f32::NEG_INFINITY; b * queries * keys];
    for (r, parent) in parents.iter().enumerate() {
        let pad = pads[r];
        if pad + parent.len() != queries {
            return Err(Error::param(
                "attention mask",
                format!("row {r}: {pad} pads + {} tokens != {queries}", parent.len()),
            ));
        }
        let pos = depths(parent);
        for i in 0..queries {
            let base = (r * queries + i) * keys;
            if i < pad {
                m[base + q0 + i] = 0.0;
                continue;
            }
            // Past keys (resumed chains, no padding) precede every query of the row.
            let here = q0 + i;
            for j in (0..q0).filter(|&j| window.is_none_or(|w| here - j < w)) {
                m[base + j] = 0.0;
            }
            let u = i - pad;
            let mut v = Some(u);
            while let Some(k) = v {
                if window.is_some_and(|w| pos[u] - pos[k] >= w) {
                    break;
                }
                m[base + q0 + pad + k] = 0.0;
                v = parent[k];
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, queries, keys), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_shares_prefixes_and_keeps_depths() {
        let a: &[u32] = &[1, 2, 3, 4];
        let b: &[u32] = &[1, 2, 5];
        let c: &[u32] = &[7];
        let (row, nodes) = TreeRow::pack(&[a, b, c, a]);
        assert_eq!(row.tokens, vec![1, 2, 3, 4, 5, 7]);
        assert_eq!(nodes[1], vec![0, 1, 4]);
        assert_eq!(nodes[3], nodes[0]);
        assert_eq!(row.positions(), vec![0, 1, 2, 3, 2, 0]);
        row.validate().unwrap();
        for (seq, path) in [a, b, c].iter().zip(&nodes) {
            let got: Vec<u32> = path.iter().map(|&n| row.tokens[n]).collect();
            assert_eq!(&got, seq);
        }
    }

    fn visible(m: &Tensor) -> Vec<Vec<Vec<bool>>> {
        m.squeeze(1)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|q| q.into_iter().map(|x| x == 0.0).collect())
                    .collect()
            })
            .collect()
    }

    fn parents(rows: &[TreeRow]) -> Vec<Vec<Option<usize>>> {
        rows.iter().map(|r| r.parent.clone()).collect()
    }

    #[test]
    fn chain_mask_is_causal_with_padding_and_window() {
        let rows = parents(&[TreeRow::chain(&[1, 2, 3, 4]), TreeRow::chain(&[5, 6])]);
        let m = visible(&attention_mask(&rows, &[0, 2], 4, 4, Some(2), &Device::Cpu).unwrap());
        for (i, query) in m[0].iter().enumerate() {
            for (j, &seen) in query.iter().enumerate() {
                assert_eq!(seen, j <= i && i - j < 2, "row 0 ({i},{j})");
            }
        }
        assert_eq!(m[1][0], vec![true, false, false, false]);
        assert_eq!(m[1][3], vec![false, false, true, true]);
    }

    #[test]
    fn tree_mask_sees_ancestors_only() {
        let (row, _) = TreeRow::pack(&[&[1, 2, 3], &[1, 4, 5]]);
        let m = visible(&attention_mask(&parents(&[row]), &[0], 5, 5, None, &Device::Cpu).unwrap());
        // Row order: 1 2 3 4 5; token 4 (index 3) hangs under 1 (index 0).
        assert_eq!(m[0][2], vec![true, true, true, false, false]);
        assert_eq!(m[0][4], vec![true, false, false, true, true]);
    }

    #[test]
    fn resumed_chain_sees_past_keys_within_the_window() {
        let rows = parents(&[TreeRow::chain(&[1, 2])]);
        let m = visible(&attention_mask(&rows, &[0], 2, 5, Some(3), &Device::Cpu).unwrap());
        // Queries are tokens 3 and 4 of 5.
        assert_eq!(m[0][0], vec![false, true, true, true, false]);
        assert_eq!(m[0][1], vec![false, false, true, true, true]);
    }

    #[test]
    fn parents_must_precede_children() {
        let bad = TreeRow {
            tokens: vec![1, 2],
            parent: vec![Some(1), None],
        };
        assert!(bad.validate().is_err());
    }
}
