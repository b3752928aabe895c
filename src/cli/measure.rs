//! `biaslens measure` (being written by the lead).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("measure is not available in this build yet")
}
