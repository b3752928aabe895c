//! `sites.json`: where the bias is carried, per kind, at the last occupation token and the last
//! token, and the MLP layers LSDM edits by default.

use super::aggregate::{RoleSummary, TokenRole};
use super::Kind;
use crate::stats::Estimate;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One located site: the grid layer with the largest average IE and its restored window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteChoice {
    pub kind: Kind,
    pub role: TokenRole,
    /// Rank 1 = largest average IE.
    pub rank: usize,
    pub layer: usize,
    /// Layers restored for this grid layer, `[start, end)`.
    pub window: (usize, usize),
    pub ie: Estimate,
}

/// The localisation of one trace run, read by the edit stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocatedSites {
    pub model: String,
    pub num_layers: usize,
    pub window: usize,
    pub n_prompts: usize,
    /// Top layers per kind at the last occupation token and at the last token.
    pub top: Vec<SiteChoice>,
    /// Grid layer of the bottom MLP window: the largest MLP IE at the last occupation token
    /// among layers below L/2.
    pub edit_center: usize,
    /// The MLP window around `edit_center` (the layers LSDM edits by default).
    pub edit_layers: Vec<usize>,
}

impl LocatedSites {
    /// The MLP layers that LSDM edits unless the user names others.
    pub fn default_edit_layers(&self) -> Vec<usize> {
        self.edit_layers.clone()
    }

    pub fn load(path: &Path) -> Result<LocatedSites> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not a sites.json: {e}")))
    }
}

/// Pick the `top_k` layers per kind and role from aggregated role summaries.
pub fn locate_sites(model: &str, summaries: &[RoleSummary], num_layers: usize, window: usize, n_prompts: usize, top_k: usize) -> Result<LocatedSites> {
    let mut top = Vec::new();
    for s in summaries.iter().filter(|s| matches!(s.role, TokenRole::LastSubject | TokenRole::Last)) {
        let mut order: Vec<usize> = (0..s.ie.len()).collect();
        order.sort_by(|&a, &b| s.ie[b].value.total_cmp(&s.ie[a].value).then(a.cmp(&b)));
        for (rank, &l) in order.iter().take(top_k).enumerate() {
            let w = s.kind.window(l, window, num_layers);
            top.push(SiteChoice { kind: s.kind, role: s.role, rank: rank + 1, layer: l, window: (w.start, w.end), ie: s.ie[l].clone() });
        }
    }
    let mlp = summaries
        .iter()
        .find(|s| s.kind == Kind::Mlp && s.role == TokenRole::LastSubject)
        .ok_or_else(|| Error::param("kinds", "locating the edit layers needs the `mlp` kind"))?;
    let bottom = (num_layers / 2).max(1).min(mlp.ie.len());
    let edit_center = (0..bottom).max_by(|&a, &b| mlp.ie[a].value.total_cmp(&mlp.ie[b].value).then(b.cmp(&a))).unwrap_or(0);
    let edit_layers = Kind::Mlp.window(edit_center, window, num_layers).collect();
    Ok(LocatedSites { model: model.to_string(), num_layers, window, n_prompts, top, edit_center, edit_layers })
}
