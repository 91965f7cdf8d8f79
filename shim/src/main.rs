use anyhow::Result;
use clap::Parser;

/// containerd shim v2 for husk (runtime type io.containerd.husk.v2).
#[derive(Parser)]
#[command(name = "containerd-shim-husk-v2", version)]
struct Cli {}

fn main() -> Result<()> {
    let _ = Cli::parse();
    println!("{}", husk_shim::RUNTIME_TYPE);
    Ok(())
}
