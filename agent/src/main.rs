use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use husk_agent::engine::container::{self, CreateOpts};
use husk_agent::engine::exec;

/// husk's in-guest init and container engine.
#[derive(Parser)]
#[command(name = "husk-agent", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine like runc (for host tests and comparisons).
    Oci(Oci),
    /// Ask a running agent who it is (health check and guest details).
    Ctl {
        /// `unix:///path` or `vsock://cid:port`.
        #[arg(long)]
        address: String,
        /// Keep retrying the connection this long (seconds).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Run a container from this spec (config.json with the agent's paths) and exit
        /// with its status, instead of describing the agent.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Wait (up to --timeout) for an OOM event and print the container id.
        #[arg(long)]
        next_oom: bool,
    },
    /// Serve the agent API on a Unix socket (host tests) or vsock (`vsock://-1:1024`).
    Serve {
        /// `unix:///path` or `vsock://cid:port`.
        #[arg(long, default_value = "unix:///run/husk-agent.sock")]
        address: String,
        /// State root for containers.
        #[arg(long, default_value = "/run/husk-agent")]
        root: PathBuf,
    },
}

#[derive(Args)]
struct Oci {
    /// State root directory.
    #[arg(long, default_value = "/run/husk")]
    root: PathBuf,
    /// Also write errors to this file (runc's --log).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility; ignored.
    #[arg(long, hide = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    op: Op,
}

#[derive(Args, Clone)]
struct CreateArgs {
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the init process's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket receiving the pty master when process.terminal is set.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass fds 3..3+N to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    /// Use chroot instead of pivot_root.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    /// Container id.
    id: String,
}

#[derive(Subcommand)]
enum Op {
    /// Create a container (init waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print the container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container.
    Kill {
        /// Signal all processes of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Freeze all processes of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Run a process inside a running container.
    Exec {
        /// The OCI process (JSON file).
        #[arg(short, long)]
        process: PathBuf,
        /// Write the process's pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket receiving the pty master when process.terminal is set.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Do not wait for the process.
        #[arg(short, long)]
        detach: bool,
        id: String,
    },
    /// Delete a stopped container.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create, start and wait; exit with the container's status.
    Run {
        #[command(flatten)]
        c: CreateArgs,
        /// Accepted for runc compatibility: detach after start.
        #[arg(short, long)]
        detach: bool,
    },
}

fn opts(root: PathBuf, c: CreateArgs) -> CreateOpts {
    CreateOpts {
        root,
        id: c.id,
        bundle: c.bundle,
        pid_file: c.pid_file,
        console_socket: c.console_socket,
        preserve_fds: c.preserve_fds,
        no_pivot: c.no_pivot,
    }
}

fn oci(o: Oci) -> Result<i32> {
    Ok(match o.op {
        Op::Create(c) => {
            container::create(&opts(o.root, c))?;
            0
        }
        Op::Start { id } => {
            container::start(&o.root, &id)?;
            0
        }
        Op::State { id } => {
            let (st, _) = container::load(&o.root, &id)?;
            let mut v = serde_json::to_value(&st)?;
            if let Some(m) = v.as_object_mut() {
                m.remove("initStartTime");
                m.remove("cgroup");
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            0
        }
        Op::Kill { all, id, signal } => {
            let sig = husk_agent::engine::parse_signal(&signal)
                .with_context(|| format!("unknown signal {signal}"))?;
            container::kill(&o.root, &id, sig, all)?;
            0
        }
        Op::Exec {
            process,
            pid_file,
            console_socket,
            detach,
            id,
        } => {
            let text = std::fs::read_to_string(&process)
                .with_context(|| format!("reading {}", process.display()))?;
            let process = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", process.display()))?;
            let pid = exec::exec(&exec::ExecOpts {
                root: o.root,
                id,
                process,
                pid_file,
                console_socket,
            })?;
            if detach {
                0
            } else {
                container::wait(pid)?
            }
        }
        Op::Pause { id } => {
            container::pause(&o.root, &id, true)?;
            0
        }
        Op::Resume { id } => {
            container::pause(&o.root, &id, false)?;
            0
        }
        Op::Delete { force, id } => {
            container::delete(&o.root, &id, force)?;
            0
        }
        Op::Run { c, detach } => {
            let opts = opts(o.root, c);
            if detach {
                container::create(&opts)?;
                container::start(&opts.root, &opts.id)?;
                0
            } else {
                container::run(&opts)?
            }
        }
    })
}

fn main() -> Result<()> {
    let pid = std::process::id();
    if pid == 1 {
        let quiet =
            husk_agent::init::quiet(std::env::var_os(husk_agent::init::QUIET_ENV).as_deref());
        if !quiet {
            husk_agent::init::announce(&mut std::io::stdout(), pid)?;
        }
        husk_agent::init::run_as_pid1(quiet);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Oci(o)) => {
            let log = o.log.clone();
            match oci(o) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("husk-agent: {e:#}");
                    if let Some(l) = log {
                        let _ = std::fs::write(l, format!("{e:#}\n"));
                    }
                    std::process::exit(1)
                }
            }
        }
        Some(Cmd::Ctl {
            address,
            timeout,
            run,
            next_oom,
        }) => match run {
            None if next_oom => {
                let d = std::time::Duration::from_secs(timeout);
                println!("{}", husk_agent::client::next_oom(&address, d)?);
            }
            None => {
                let d = std::time::Duration::from_secs(timeout);
                println!("{}", husk_agent::client::describe(&address, d)?);
            }
            Some(spec) => {
                let json = std::fs::read(&spec).with_context(|| spec.display().to_string())?;
                let out = husk_agent::client::run(&address, "ctl-run", &json)?;
                use std::io::Write;
                std::io::stdout().write_all(&out.stdout)?;
                std::io::stderr().write_all(&out.stderr)?;
                std::process::exit(out.status as i32);
            }
        },
        Some(Cmd::Serve { address, root }) => husk_agent::server::serve(&address, &root)?,
        None => {
            println!("husk-agent {}: see --help", env!("CARGO_PKG_VERSION"));
        }
    }
    Ok(())
}
