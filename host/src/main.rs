//! The `vipd` command line: argument parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vipd::binding::BindingTable;
use vipd::config::Config;

/// A programmable Layer-4 director: virtual IP addresses on many ports.
#[derive(Parser)]
#[command(name = "vipd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and print what it defines, or every problem in it.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
    }
}

/// `vipd check`: exit 0 with a summary, or 1 with one problem per line on stderr.
fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let table = BindingTable::from_config(&config);
            println!(
                "{}: ok: {} virtual machines, {} ports, {} real servers",
                path.display(),
                table.virtuals.len(),
                table.ports.len(),
                table.reals.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
