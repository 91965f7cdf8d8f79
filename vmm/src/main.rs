use anyhow::Result;
use clap::{Parser, Subcommand};

/// husk's KVM microVM monitor: one process per pod.
#[derive(Parser)]
#[command(name = "husk-vmm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Say what this host can do for husk, one line per item (exit 1 if VMs cannot run).
    Check,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Check => {
            let findings = husk_vmm::check::run(&husk_vmm::check::RealHost);
            for f in &findings {
                println!("{f}");
            }
            let runnable = findings
                .iter()
                .any(|f| f.item == "kvm" && f.level == husk_vmm::check::Level::Ok);
            std::process::exit(if runnable { 0 } else { 1 });
        }
    }
}
