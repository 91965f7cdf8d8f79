//! containerd-shim-husk-v2: containerd starts it as `start`, `delete`, or the server.

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = rt.block_on(husk_shim::server::run()) {
        eprintln!("{}: {e}", husk_shim::RUNTIME_TYPE);
        std::process::exit(1);
    }
    Ok(())
}
