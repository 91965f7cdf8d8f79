//! `husk`: the node admin's view of husk pods. `husk ps` lists them with their VMs, memory
//! and uptime; `husk metrics` prints per-pod figures in the Prometheus text format. The
//! logic is in `husk_shim::admin`; this is its command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "husk", version, about = "husk pods on this node")]
struct Cli {
    /// The shim's state directory (default: `state_dir` of the husk config, HUSK_CONFIG or
    /// /etc/husk/config.toml).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pods, their VMs, memory and uptime.
    Ps,
    /// Per-pod figures in the Prometheus text format (for node-exporter's textfile
    /// collector or any exporter that reads a file).
    Metrics,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let state_dir = match cli.state_dir {
        Some(d) => d,
        None => husk_shim::config::Config::load_default()?.state_dir,
    };
    let pods = husk_shim::admin::list_pods(&state_dir);
    let out = match cli.cmd {
        Cmd::Ps => husk_shim::admin::render_ps(&pods),
        Cmd::Metrics => husk_shim::admin::render_metrics(&pods),
    };
    print!("{out}");
    Ok(())
}
