//! `biaslens trace` and `biaslens mediate` (filled by the tracing work).
#[derive(clap::Args)]
pub struct TraceArgs {}
#[derive(clap::Args)]
pub struct MediateArgs {}
pub fn run_trace(_a: TraceArgs) -> anyhow::Result<()> {
    anyhow::bail!("trace is not available in this build yet")
}
pub fn run_mediate(_a: MediateArgs) -> anyhow::Result<()> {
    anyhow::bail!("mediate is not available in this build yet")
}
