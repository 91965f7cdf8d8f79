//! `husk-cri`: the CRI client the VM tests drive, one CRI step per subcommand.
//!
//!   husk-cri -s SOCK version
//!   husk-cri -s SOCK pod-run NAME [--handler husk] [--log-dir DIR] [--share-pid|--host-pid] -> pod id
//!   husk-cri -s SOCK ctr-run [--share-pid|--host-pid] POD_ID POD_NAME NAME IMAGE [CMD...] -> container id
//!   husk-cri -s SOCK exec CONTAINER_ID CMD...   (stdout/stderr passed on, exit code too)
//!   husk-cri -s SOCK pod-ip POD_ID | pod-state POD_ID | pod-rm POD_ID

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use husk_cri_client::{container_config, CriClient, PodSpec};

#[derive(Parser)]
#[command(name = "husk-cri", about = "A small CRI client for husk's tests")]
struct Cli {
    /// containerd's CRI socket (its gRPC address).
    #[arg(short, long, default_value = "/run/containerd/containerd.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The runtime's name and CRI API version.
    Version,
    /// Runs a pod sandbox; prints its id.
    PodRun {
        name: String,
        #[arg(long, default_value = "husk")]
        handler: String,
        #[arg(long, default_value = "")]
        log_dir: String,
        /// Use the node's network namespace.
        #[arg(long)]
        host_network: bool,
        /// The pod's containers share one pid namespace (shareProcessNamespace).
        #[arg(long)]
        share_pid: bool,
        /// The pod asks for the node's pid namespace (hostPID).
        #[arg(long)]
        host_pid: bool,
    },
    /// Creates and starts a container in a pod; prints its id.
    CtrRun {
        pod_id: String,
        /// The name the pod was run with (its config is sent again, as the kubelet does).
        pod_name: String,
        name: String,
        image: String,
        command: Vec<String>,
        #[arg(long, default_value = "")]
        log_dir: String,
        /// The pod was run with --share-pid.
        #[arg(long)]
        share_pid: bool,
        /// The pod was run with --host-pid.
        #[arg(long)]
        host_pid: bool,
    },
    /// Runs a command in a container (ExecSync); exits with its exit code.
    Exec {
        container_id: String,
        #[arg(long, default_value_t = 60)]
        timeout: i64,
        #[arg(required = true, trailing_var_arg = true)]
        cmd: Vec<String>,
    },
    /// Prints the pod's IP.
    PodIp { pod_id: String },
    /// Prints the pod's state.
    PodState { pod_id: String },
    /// Stops and removes a pod and its containers.
    PodRm { pod_id: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut c = CriClient::connect(&cli.socket).await?;
    match cli.cmd {
        Cmd::Version => {
            let (name, api) = c.version().await?;
            println!("{name} {api}");
        }
        Cmd::PodRun {
            name,
            handler,
            log_dir,
            host_network,
            share_pid,
            host_pid,
        } => {
            let mut spec = PodSpec::new(&name);
            spec.log_dir = log_dir;
            spec.host_network = host_network;
            spec.share_pid = share_pid;
            spec.host_pid = host_pid;
            println!("{}", c.run_pod(&spec, &handler).await?);
        }
        Cmd::CtrRun {
            pod_id,
            pod_name,
            name,
            image,
            command,
            log_dir,
            share_pid,
            host_pid,
        } => {
            let mut spec = PodSpec::new(&pod_name);
            spec.log_dir = log_dir;
            spec.share_pid = share_pid;
            spec.host_pid = host_pid;
            let cfg = container_config(&spec, &name, &image, &command);
            println!("{}", c.run_container(&pod_id, &spec, cfg).await?);
        }
        Cmd::Exec {
            container_id,
            timeout,
            cmd,
        } => {
            let (code, out, err) = c.exec_sync(&container_id, &cmd, timeout).await?;
            std::io::stdout().write_all(&out).context("stdout")?;
            std::io::stderr().write_all(&err).context("stderr")?;
            std::process::exit(code);
        }
        Cmd::PodIp { pod_id } => println!("{}", c.pod_ip(&pod_id).await?),
        Cmd::PodState { pod_id } => println!("{}", c.pod_state(&pod_id).await?),
        Cmd::PodRm { pod_id } => c.remove_pod(&pod_id).await?,
    }
    Ok(())
}
