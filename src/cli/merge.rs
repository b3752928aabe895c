//! `biaslens merge` (filled by the sharding work).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("merge is not available in this build yet")
}
