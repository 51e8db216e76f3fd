//! `wgtrain devices`: the GPU adapters wgpu can see.

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct DevicesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Run `wgtrain devices`.
pub(crate) fn run(a: DevicesArgs) -> Result<()> {
    let adapters = wgtrain::gpu::list_adapters();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&adapters)?);
        return Ok(());
    }
    if adapters.is_empty() {
        outln!("no GPU adapters found; `--device auto` will use the CPU");
    }
    for (i, ad) in adapters.iter().enumerate() {
        outln!("[{i}] {ad}");
    }
    outln!(
        "cpu: {} threads (always available as --device cpu)",
        wgtrain::cpu::cores()
    );
    Ok(())
}
