//! `biaslens report` (filled by the reporting work).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("report is not available in this build yet")
}
