//! LSDM: the least-squares debiasing edit (MEMIT-style reconstruction, see docs/method.md).
//!
//! 1. keys k = input of the MLP down-projection at the last occupation token, averaged over edit
//!    templates × context prefixes, per edit profession;
//! 2. a target residual z* = h̄ + δ after the last edited layer, δ optimised so p(he) ≈ p(she);
//! 3. for each edited layer in turn, R = (z* − h_current) / layers left and
//!    ΔW = Rᵀ K (λC + KᵀK + μPᵀP)⁻¹, with C the corpus second moment of keys and P the keys of
//!    definitional professions whose outputs must stay.

use super::context::{build_prompts, EditPrompt, EditSets, DEFAULT_PREFIXES};
use super::corpus::corpus_moments;
use super::delta::{DeltaMeta, WeightDelta};
use super::keys::{capture_at_subject, group_mean};
use super::solve::{self, solve_update_robust, LsqInput, SolvePath};
use super::target::{optimise_targets, TargetParams};
use crate::data::{vig_templates, Template};
use crate::model::{Arch, Model, Norm, Site, Transformer};
use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// LSDM's hyperparameters: `[lsdm]` in `biaslens edit --spec`, `[methods.lsdm.params]` in a
/// report spec. Missing fields take the defaults below.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LsdmParams {
    /// λ, weight of the corpus prior tr(ΔCΔᵀ) (MEMIT's mom2_update_weight).
    pub lambda: f64,
    /// μ, weight of keeping the preserved (definitional) keys' outputs.
    pub mu: f64,
    /// `moment` (C from the corpus) or `identity` (ridge).
    pub prior: Prior,
    /// Tokens of WikiText-2 valid used for C.
    pub corpus_tokens: usize,
    pub corpus_seq_len: usize,
    /// Edit templates used to optimise the target (the first n edit templates).
    pub target_templates: usize,
    /// Context prefixes used for keys (the first n of DEFAULT_PREFIXES). FT-L and DAMA build
    /// their edit prompts from this and `target_templates` too (`edit::method::edit_model`).
    pub prefixes: usize,
    pub target: TargetParams,
    pub batch: usize,
    /// Average keys over each profession's contexts (MEMIT's compute_ks) instead of one key per
    /// prompt. Per-prompt keys (default) make the edit hit the target in every edit template.
    pub average_keys: bool,
    /// What to do when the MLP output passes a norm before joining the residual (Gemma-3's
    /// post-feedforward RMSNorm). Always written to edit.json and to stage keys, so a record
    /// says which rule made it; records made before the option existed used `ignore`.
    pub post_norm: PostNorm,
}

/// The prior C in LSDM's λC term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prior {
    /// C = E[k kᵀ], the second moment of keys over the corpus (MEMIT's mom2).
    #[default]
    Moment,
    /// C = I: a ridge penalty, no corpus statistics.
    Identity,
}

impl Prior {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Prior::Moment => "moment",
            Prior::Identity => "identity",
        }
    }
}

impl std::fmt::Display for Prior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Prior {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named("prior", s, &[Prior::Moment, Prior::Identity], Prior::name)
    }
}

/// How LSDM treats a norm between the down-projection and the residual stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostNorm {
    /// Turn each layer's residual-side target into a target for the down-projection's output
    /// through the norm ([`crate::model::transformer::Norm::rms_preimage`]), keeping the output's
    /// scale: the closed form then fits what the norm will pass on.
    #[default]
    Invert,
    /// Treat the norm as absent (MEMIT's closed form as written): ΔW k is assumed to add to the
    /// residual unchanged. Kept to reproduce the destructive Gemma edit (docs/findings.md §3d).
    Ignore,
}

impl PostNorm {
    /// The spelling in specs, edit.json and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            PostNorm::Invert => "invert",
            PostNorm::Ignore => "ignore",
        }
    }
}

impl std::str::FromStr for PostNorm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_named(
            "post_norm",
            s,
            &[PostNorm::Invert, PostNorm::Ignore],
            PostNorm::name,
        )
    }
}

impl Default for LsdmParams {
    fn default() -> Self {
        LsdmParams {
            // MEMIT's 15,000 assumes thousands of edits; with tens of edit professions it
            // swamped KᵀK and the edit did nothing (docs/method.md, measured on SmolLM2).
            lambda: 10.0,
            mu: 1.0,
            prior: Prior::Moment,
            corpus_tokens: 16_384,
            corpus_seq_len: 128,
            target_templates: 12,
            prefixes: 3,
            target: TargetParams::default(),
            batch: 64,
            average_keys: false,
            post_norm: PostNorm::Invert,
        }
    }
}

impl LsdmParams {
    /// Range checks TOML types cannot express; errors name the field as `lsdm.<field>`.
    pub fn validate(&self) -> Result<()> {
        use crate::error::{at_least_one, non_negative};
        non_negative("lsdm.lambda", self.lambda)?;
        non_negative("lsdm.mu", self.mu)?;
        at_least_one("lsdm.corpus_tokens", self.corpus_tokens)?;
        at_least_one("lsdm.corpus_seq_len", self.corpus_seq_len)?;
        at_least_one("lsdm.target_templates", self.target_templates)?;
        at_least_one("lsdm.prefixes", self.prefixes)?;
        at_least_one("lsdm.batch", self.batch)?;
        self.target.validate("lsdm.target")
    }
}

/// What the edit did, for edit.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LsdmReport {
    pub layers: Vec<usize>,
    pub n_edit_professions: usize,
    pub n_preserved: usize,
    pub n_key_prompts: usize,
    pub target_bias_loss: Vec<f64>,
    pub target_kl: Vec<f64>,
    /// ‖ΔW‖_F per layer.
    pub delta_norms: Vec<f64>,
    /// Per edited layer: f32 solve, or the f64 fallback (see `solve::solve_update_robust`).
    #[serde(default)]
    pub solve_paths: Vec<SolvePath>,
    /// ‖R‖ per layer (mean over professions) — how much each layer was asked to move.
    pub residual_norms: Vec<f64>,
    /// C's corpus tokens and this run's cost of gathering it (0 with the identity prior).
    #[serde(flatten)]
    pub statistics: super::corpus::CorpusCost,
}

/// HF name of layer l's down-projection and whether HF stores it transposed (GPT-2 Conv1D).
pub fn down_weight_name(arch: Arch, l: usize) -> (String, bool) {
    match arch {
        Arch::Gpt2 => (format!("transformer.h.{l}.mlp.c_proj.weight"), true),
        _ => (format!("model.layers.{l}.mlp.down_proj.weight"), false),
    }
}

/// Record layer `l`'s down-projection change `dw` (transformer layout [d_model, d_ff]) in `delta`
/// under its HF name and layout, with the base model's original bits.
pub fn record_down_delta(
    model: &Model,
    delta: &mut WeightDelta,
    l: usize,
    dw: Tensor,
) -> Result<()> {
    record_named_delta(model, delta, down_weight_name(model.config().arch, l), dw)
}

/// HF name of layer l's attention output projection and whether HF stores it transposed.
pub fn o_weight_name(arch: Arch, l: usize) -> (String, bool) {
    match arch {
        Arch::Gpt2 => (format!("transformer.h.{l}.attn.c_proj.weight"), true),
        _ => (format!("model.layers.{l}.self_attn.o_proj.weight"), false),
    }
}

/// Record layer `l`'s attention output-projection change (transformer layout [d_model, d_z]).
pub fn record_o_delta(model: &Model, delta: &mut WeightDelta, l: usize, dw: Tensor) -> Result<()> {
    record_named_delta(model, delta, o_weight_name(model.config().arch, l), dw)
}

fn record_named_delta(
    model: &Model,
    delta: &mut WeightDelta,
    (name, transposed): (String, bool),
    dw: Tensor,
) -> Result<()> {
    let orig = model
        .weights
        .get(&name)
        .ok_or_else(|| Error::Model(format!("missing tensor {name}")))?;
    let hf = if transposed {
        dw.t()?.contiguous()?
    } else {
        dw
    };
    delta.insert(&name, orig, &hf)
}

/// Prompts shared by the edit methods: keys (edit templates × prefixes), targets, KL, preserved.
pub struct EditPrompts {
    pub keys: Vec<EditPrompt>,
    pub target: Vec<EditPrompt>,
    pub kl: Vec<EditPrompt>,
    pub preserve: Vec<EditPrompt>,
}

pub fn edit_prompts(
    model: &Model,
    sets: &EditSets,
    target_templates: usize,
    prefixes: usize,
) -> Result<EditPrompts> {
    let tok = model.tokenizer()?;
    let all = vig_templates();
    let templates: Vec<Template> = sets
        .edit_templates
        .iter()
        .map(|&i| all[i].clone())
        .collect();
    let prefixes = &DEFAULT_PREFIXES[..prefixes.clamp(1, DEFAULT_PREFIXES.len())];
    let keys = build_prompts(tok, &sets.edit, &templates, prefixes)?;
    let target = build_prompts(
        tok,
        &sets.edit,
        &templates[..target_templates.clamp(1, templates.len())],
        &[""],
    )?;
    let kl = build_prompts(tok, &sets.edit, &[Template::new("The {} is")?], &[""])?;
    let preserve = if sets.preserve.is_empty() {
        Vec::new()
    } else {
        build_prompts(tok, &sets.preserve, &templates, &[""])?
    };
    Ok(EditPrompts {
        keys,
        target,
        kl,
        preserve,
    })
}

fn groups(p: &[EditPrompt]) -> Vec<usize> {
    p.iter().map(|x| x.group).collect()
}

/// Run LSDM on `layers`; returns the delta (HF names) and a report.
#[allow(clippy::too_many_arguments)]
pub fn lsdm(
    model: &Model,
    sets: &EditSets,
    layers: &[usize],
    params: &LsdmParams,
    corpus: &Path,
    cache_dir: Option<&Path>,
    mut log: impl FnMut(&str),
) -> Result<(WeightDelta, LsdmReport)> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let n_layers = model.config().num_layers;
    if layers.is_empty() || layers.iter().any(|&l| l >= n_layers) {
        return Err(Error::param(
            "layers",
            format!("{layers:?} must be a non-empty subset of 0..{n_layers}"),
        ));
    }
    let top = *layers.last().unwrap_or(&0);
    let tok = model.tokenizer()?;
    let pronouns = [tok.single_token_id(" he")?, tok.single_token_id(" she")?];
    let prompts = edit_prompts(model, sets, params.target_templates, params.prefixes)?;
    let n_groups = sets.edit.len();
    let mut tr: Transformer = model.transformer.clone();

    // Target z* = h̄ + δ after the top edited layer.
    let h0 = capture_at_subject(&tr, &prompts.keys, &[Site::ResidPost(top)], params.batch)?;
    let h_bar = group_mean(&h0[&Site::ResidPost(top)], &groups(&prompts.keys), n_groups)?;
    let norms: Vec<f32> = h_bar
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .flatten_all()?
        .to_vec1()?;
    log(&format!(
        "optimising targets for {n_groups} professions at layer {top}"
    ));
    let targets = optimise_targets(
        &tr,
        &prompts.target,
        &prompts.kl,
        top,
        pronouns,
        &norms,
        &params.target,
        |s, l| {
            if s % 5 == 0 {
                log(&format!("  step {s}: bias loss {l:.4}"));
            }
        },
    )?;
    let key_groups = groups(&prompts.keys);
    // Per-prompt targets z*_i = h_i + δ_{group(i)}, or per-profession z* = h̄ + δ when averaging.
    let z_star = if params.average_keys {
        (&h_bar + &targets.delta)?
    } else {
        let idx = Tensor::from_vec(
            key_groups.iter().map(|&g| g as u32).collect::<Vec<_>>(),
            key_groups.len(),
            &h_bar.device().clone(),
        )?;
        (&h0[&Site::ResidPost(top)] + targets.delta.index_select(&idx, 0)?)?
    };

    // Corpus statistics (cacheable; their work is counted apart from the method's).
    let work_before_statistics = tr.work.read();
    let mut statistics_tokens = 0u64;
    let prior_moments = match params.prior {
        Prior::Moment => {
            let (m, tokens) = corpus_moments(
                &tr,
                &model.info.sha256,
                tok,
                corpus,
                params.corpus_seq_len,
                params.corpus_tokens,
                &layers.iter().map(|&l| Site::MlpKey(l)).collect::<Vec<_>>(),
                cache_dir,
                &mut log,
            )?;
            statistics_tokens = tokens;
            Some(m)
        }
        Prior::Identity => None,
    };
    let statistics_work = tr.work.read() - work_before_statistics;

    let mut delta = WeightDelta::new(DeltaMeta {
        method: "lsdm".into(),
        model_hash: model.info.identity().to_string(),
        params: serde_json::to_value(params)?,
    });
    let (mut delta_norms, mut residual_norms) = (Vec::new(), Vec::new());
    let mut solve_paths = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let post_norm = match params.post_norm {
            PostNorm::Invert => tr.layers[l].post_mlp_norm.clone(),
            PostNorm::Ignore => None,
        };
        let mut sites = vec![Site::MlpKey(l), Site::ResidPost(top)];
        if post_norm.is_some() {
            sites.push(Site::MlpOut(l));
        }
        let cap = capture_at_subject(&tr, &prompts.keys, &sites, params.batch)?;
        let per_key = |s: Site| -> Result<Tensor> {
            if params.average_keys {
                group_mean(&cap[&s], &key_groups, n_groups)
            } else {
                Ok(cap[&s].clone())
            }
        };
        let (k, h_cur) = (per_key(Site::MlpKey(l))?, per_key(Site::ResidPost(top))?);
        let r = ((&z_star - &h_cur)? / (layers.len() - i) as f64)?;
        let m = match &post_norm {
            Some(_) => Some(per_key(Site::MlpOut(l))?),
            None => None,
        };
        let r_down = down_output_change(post_norm.as_ref(), m.as_ref(), &r)?;
        let preserved = if prompts.preserve.is_empty() {
            None
        } else {
            let p = capture_at_subject(&tr, &prompts.preserve, &[Site::MlpKey(l)], params.batch)?;
            Some(group_mean(
                &p[&Site::MlpKey(l)],
                &groups(&prompts.preserve),
                sets.preserve.len(),
            )?)
        };
        let prior = match &prior_moments {
            Some(m) => solve::Prior::Moment(&m[&Site::MlpKey(l)]),
            None => solve::Prior::Identity,
        };
        let (dw, path) = solve_update_robust(&LsqInput {
            keys: &k,
            residuals: &r_down,
            prior,
            lambda: params.lambda,
            preserved: preserved.as_ref(),
            mu: params.mu,
        })?;
        if path == SolvePath::F64Fallback {
            log(&format!(
                "layer {l}: f32 factorisation failed (KᵀK ≫ λC); solved in f64 (nalgebra)"
            ));
        }
        solve_paths.push(path);
        residual_norms.push(
            r.sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .mean_all()?
                .to_scalar::<f32>()? as f64,
        );
        delta_norms.push(dw.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64);
        let down = &mut tr.layers[l].down;
        down.weight = (&down.weight + &dw)?;
        record_down_delta(model, &mut delta, l, dw)?;
        log(&format!(
            "layer {l}: |R| {:.3}, |ΔW| {:.4}",
            residual_norms[i], delta_norms[i]
        ));
    }
    let report = LsdmReport {
        layers,
        n_edit_professions: n_groups,
        n_preserved: sets.preserve.len(),
        n_key_prompts: prompts.keys.len(),
        target_bias_loss: targets.bias_loss,
        target_kl: targets.kl,
        delta_norms,
        solve_paths,
        residual_norms,
        statistics: super::corpus::CorpusCost::new(statistics_tokens, statistics_work),
    };
    Ok((delta, report))
}

/// What the down-projection's output m must change by for the residual after the MLP to change
/// by `r`: `r` itself without a post-MLP norm; through a norm y = norm(m), the change that takes
/// m to the norm's preimage of y + r at m's scale (`Norm::rms_preimage`).
pub fn down_output_change(
    post_norm: Option<&Norm>,
    m: Option<&Tensor>,
    r: &Tensor,
) -> Result<Tensor> {
    match (post_norm, m) {
        (Some(norm), Some(m)) => {
            let target = (norm.forward(m)? + r)?;
            Ok((norm.rms_preimage(m, &target)? - m)?)
        }
        (Some(_), None) => Err(Error::param(
            "post_norm",
            "inverting the post-MLP norm needs the MLP outputs",
        )),
        (None, _) => Ok(r.clone()),
    }
}

#[cfg(test)]
mod tests {

    /// PostNorm and probe StageTarget: the CLI/spec spelling is the serde spelling, both
    /// directions, and an unknown value names the parameter and every allowed value.
    #[test]
    fn post_norm_and_stage_target_spellings_round_trip() {
        use crate::edit::probe::StageTarget;
        for p in [PostNorm::Invert, PostNorm::Ignore] {
            assert_eq!(p.name().parse::<PostNorm>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        for t in [StageTarget::Share, StageTarget::Full] {
            assert_eq!(t.name().parse::<StageTarget>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        let e = "x".parse::<PostNorm>().unwrap_err().to_string();
        assert_eq!(e, "parameter `post_norm`: `x`: expected invert or ignore");
        let e = "x".parse::<StageTarget>().unwrap_err().to_string();
        assert_eq!(e, "parameter `probe target`: `x`: expected share or full");
    }
    use super::*;
    use crate::edit::target::Optimizer;

    #[test]
    fn prior_and_optimizer_keep_their_spelling() {
        // edit.json records and stage cache keys hold these strings.
        let v = serde_json::to_value(LsdmParams::default()).unwrap();
        assert_eq!(v["prior"], "moment");
        assert_eq!(v["target"]["optimizer"], "gauss-newton");
        for p in [Prior::Moment, Prior::Identity] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            assert_eq!(p.name().parse::<Prior>().unwrap(), p);
        }
        for o in [Optimizer::GaussNewton, Optimizer::Adam] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
            assert_eq!(o.name().parse::<Optimizer>().unwrap(), o);
        }
        assert_eq!(
            serde_json::to_value(Optimizer::GaussNewton).unwrap(),
            "gauss-newton"
        );
        assert_eq!(serde_json::to_value(Prior::Identity).unwrap(), "identity");
        assert_eq!(serde_json::to_value(Optimizer::Adam).unwrap(), "adam");
    }

    #[test]
    fn unknown_prior_or_optimizer_names_the_allowed_values() {
        let e = "ridge".parse::<Prior>().unwrap_err().to_string();
        assert!(
            e.contains("ridge") && e.contains("moment or identity"),
            "{e}"
        );
        let e = "sgd".parse::<Optimizer>().unwrap_err().to_string();
        assert!(
            e.contains("sgd") && e.contains("gauss-newton or adam"),
            "{e}"
        );
        let mut v = serde_json::to_value(LsdmParams::default()).unwrap();
        v["prior"] = "ridge".into();
        let e = serde_json::from_value::<LsdmParams>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("moment") && e.contains("identity"), "{e}");
    }
}
