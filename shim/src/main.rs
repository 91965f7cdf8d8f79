//! containerd-shim-husk-v2: containerd starts it as `start`, `delete`, or the server.

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(husk_shim::server::run());
    // Do not wait for blocking threads (a stdin FIFO nobody opened): the work is done.
    rt.shutdown_background();
    if let Err(e) = result {
        eprintln!("{}: {e}", husk_shim::RUNTIME_TYPE);
        std::process::exit(1);
    }
    Ok(())
}
