//! The `ftp-guard` binary: the command line (run, check, status, unban, guard, unpin…) parsed
//! with clap, logging set up, and each subcommand handed to its module in the library.
use clap::{Parser, Subcommand};
use ftp_guard::{guard_cmd, run_cmd, status_cmd};
use tracing_subscriber::EnvFilter;

/// ftp-guard: transparent FTP protector (userspace control proxy, eBPF/XDP data path).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); overrides FTP_GUARD_LOG.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: every service of the configuration file.
    Run(run_cmd::ConfigArgs),
    /// Validate the configuration file and exit (0: valid).
    Check(run_cmd::ConfigArgs),
    /// Show what a running daemon is doing: services, sessions, leases, kernel counters.
    Status(status_cmd::StatusArgs),
    /// Lift the ban of a client address (banned after failed logins) in a running daemon.
    Unban(status_cmd::UnbanArgs),
    /// Remove the programs and maps pinned under the configuration's `pin_path`.
    Unpin(run_cmd::ConfigArgs),
    /// Run the XDP data-port guard alone, with static leases (diagnostics, demo).
    Guard(guard_cmd::GuardArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("FTP_GUARD_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ftp-guard: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_cmd::run(&args).await,
            Command::Check(args) => run_cmd::check(&args),
            Command::Status(args) => status_cmd::run(&args).await,
            Command::Unban(args) => status_cmd::unban(&args).await,
            Command::Unpin(args) => run_cmd::unpin(&args),
            Command::Guard(args) => guard_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ftp-guard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Each control session holds two sockets: lift the soft open-files limit to the hard one
/// (often 1024 → 524288) so that `max_sessions` and not EMFILE is what bounds sessions.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(
                    from = before,
                    to = limit.rlim_max,
                    "open-files limit raised"
                );
            }
        }
    }
}
