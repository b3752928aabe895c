//! `biaslens eval` and `compare` (filled by the evaluation work).
#[derive(clap::Args)]
pub struct EvalArgs {}
#[derive(clap::Args)]
pub struct CompareArgs {}
pub fn run_eval(_a: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("eval is not available in this build yet")
}
pub fn run_compare(_a: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("compare is not available in this build yet")
}
