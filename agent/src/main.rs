use anyhow::Result;
use clap::Parser;

/// husk's in-guest init and container engine.
#[derive(Parser)]
#[command(name = "husk-agent", version)]
struct Cli {}

fn main() -> Result<()> {
    let pid = std::process::id();
    if pid == 1 {
        husk_agent::init::announce(&mut std::io::stdout(), pid)?;
        // PID 1 must never exit: the kernel would panic. Until the agent serves its API,
        // it parks here.
        loop {
            std::thread::park();
        }
    }
    let _ = Cli::parse();
    Ok(())
}
