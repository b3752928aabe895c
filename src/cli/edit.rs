//! `biaslens edit`, `apply`, `revert` (filled by the editing work).
#[derive(clap::Args)]
pub struct EditArgs {}
#[derive(clap::Args)]
pub struct ApplyArgs {}
#[derive(clap::Args)]
pub struct RevertArgs {}
pub fn run_edit(_a: EditArgs) -> anyhow::Result<()> {
    anyhow::bail!("edit is not available in this build yet")
}
pub fn run_apply(_a: ApplyArgs) -> anyhow::Result<()> {
    anyhow::bail!("apply is not available in this build yet")
}
pub fn run_revert(_a: RevertArgs) -> anyhow::Result<()> {
    anyhow::bail!("revert is not available in this build yet")
}
