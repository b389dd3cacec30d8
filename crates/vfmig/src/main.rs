//! `vfmig`: device processes, VMs and live migration from the command line.
//!
//! The command line is parsed raw by clap ([`cli`]), then each subcommand validates it into a
//! typed configuration and calls the libraries ([`cmd`]). A running migration is shown by
//! [`progress`] (a bar on a terminal, plain lines elsewhere), a completed one charted by
//! [`chart`] (SVG). The control socket's commands are
//! typed in the library half of this crate (`vfmig::control`), shared by `vm run`, which
//! serves them, and `vm migrate | status` and `demo`, which send them. Logs go to stderr;
//! `RUST_LOG` sets the level (`info` by default).

mod chart;
mod cli;
mod cmd;
mod out;
mod progress;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli::Cli::parse().command {
        cli::Command::Device(args) => cmd::device::run(args),
        cli::Command::Vm(cmd) => cmd::vm::run(cmd),
        cli::Command::Demo(args) => cmd::demo::run(args),
        cli::Command::Tls(cmd) => cmd::tls::run(cmd),
    };
    match result {
        // The reader of our output has gone: nothing is left to tell.
        Err(e) if e.is::<out::StdoutClosed>() => Ok(()),
        other => other,
    }
}
