//! The intervention seam, next to the plan it reads (`sites`): the state of one pass (patches
//! grouped by site, last-token shifts, captures) and `Transformer::intervene`, the one place a
//! plan's patches, shifts and captures touch the computation.

use super::sites::{InterventionPlan, Patch, PatchOp, Site};
use super::transformer::Transformer;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Mutable bookkeeping of one pass: patches grouped by site, captured activations.
pub(super) struct PassState<'a> {
    patches: HashMap<Site, Vec<&'a Patch>>,
    shifts: &'a [(Site, Tensor)],
    capture: &'a [Site],
    pub(super) captured: BTreeMap<Site, Tensor>,
    pads: &'a [usize],
    pub(super) offset: usize,
}

impl<'a> PassState<'a> {
    pub(super) fn new(plan: &'a InterventionPlan, pads: &'a [usize], offset: usize) -> Self {
        let mut patches: HashMap<Site, Vec<&Patch>> = HashMap::new();
        for p in &plan.patches {
            patches.entry(p.site).or_default().push(p);
        }
        PassState {
            patches,
            shifts: &plan.last_token_shifts,
            capture: &plan.capture,
            captured: BTreeMap::new(),
            pads,
            offset,
        }
    }
}

impl Transformer {
    /// The one place where a plan touches the computation: apply this site's patches, then record it.
    pub(super) fn intervene(&self, site: Site, x: Tensor, st: &mut PassState) -> Result<Tensor> {
        let x = match st.patches.get(&site) {
            Some(patches) if !patches.is_empty() => {
                apply_patches(&x, patches, st.pads, st.offset, site)?
            }
            _ => x,
        };
        let mut x = x;
        for (_, shift) in st.shifts.iter().filter(|(s, _)| *s == site) {
            x = add_at_last_token(&x, shift, site)?;
        }
        if st.capture.contains(&site) {
            st.captured.insert(site, x.clone());
        }
        Ok(x)
    }
}

/// x + (value at each row's last token): [rows, tokens, width] + [rows, width], differentiable.
fn add_at_last_token(x: &Tensor, value: &Tensor, site: Site) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    if value.dims() != [b, w] {
        return Err(Error::param(
            "last-token shift",
            format!("{:?} for a [{b}, {w}] shift at {site}", value.dims()),
        ));
    }
    let mut hot = vec![0f32; b * t];
    for r in 0..b {
        hot[r * t + t - 1] = 1.0;
    }
    let hot = Tensor::from_vec(hot, (b, t, 1), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_add(&hot.broadcast_mul(&value.to_dtype(x.dtype())?.unsqueeze(1)?)?)?)
}

/// Apply Set/Add patches to a [rows, tokens, width] activation with one masked blend.
fn apply_patches(
    x: &Tensor,
    patches: &[&Patch],
    pads: &[usize],
    offset: usize,
    site: Site,
) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    let mut keep = vec![1f32; b * t * w];
    let mut set = vec![0f32; b * t * w];
    let mut add = vec![0f32; b * t * w];
    let (mut any_set, mut any_add) = (false, false);
    for p in patches {
        if p.row >= b {
            return Err(Error::param(
                "patch row",
                format!("{} is outside a batch of {b} rows at {site}", p.row),
            ));
        }
        if p.token < offset || pads[p.row] + p.token - offset >= t {
            return Err(Error::param(
                "patch token",
                format!(
                    "token {} of row {} is outside the pass at {site}",
                    p.token, p.row
                ),
            ));
        }
        let (c0, c1) = p.cols.unwrap_or((0, w));
        if c1 > w || c0 >= c1 {
            return Err(Error::param(
                "patch cols",
                format!("{c0}..{c1} does not fit width {w} at {site}"),
            ));
        }
        let vals = p
            .value
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if vals.len() != c1 - c0 {
            return Err(Error::param(
                "patch value",
                format!("{} values for {} columns at {site}", vals.len(), c1 - c0),
            ));
        }
        let base = ((p.row * t) + pads[p.row] + p.token - offset) * w;
        for (j, v) in vals.iter().enumerate() {
            match p.op {
                PatchOp::Set => {
                    keep[base + c0 + j] = 0.0;
                    set[base + c0 + j] = *v;
                    any_set = true;
                }
                PatchOp::Add => {
                    add[base + c0 + j] += *v;
                    any_add = true;
                }
            }
        }
    }
    let dev = x.device();
    let mut y = x.clone();
    if any_set {
        let keep = Tensor::from_vec(keep, (b, t, w), dev)?;
        let set = Tensor::from_vec(set, (b, t, w), dev)?;
        y = ((y * keep)? + set)?;
    }
    if any_add {
        y = (y + Tensor::from_vec(add, (b, t, w), dev)?)?;
    }
    Ok(y)
}
