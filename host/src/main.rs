//! The `vipd` command line: argument parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A programmable Layer-4 director: virtual IP addresses on many ports.
#[derive(Parser)]
#[command(name = "vipd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy plugins (WebAssembly components).
    Plugin {
        #[command(subcommand)]
        cmd: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Say whether FILE is a valid vipd plugin and which worlds it implements, or why not (exit 1).
    Check {
        /// The plugin file (NAME.wasm).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Plugin { cmd } => plugin(cmd),
    }
}

fn plugin(cmd: PluginCommand) -> ExitCode {
    use vipd::plugin::{PluginHost, PluginLimits};
    match cmd {
        PluginCommand::Check { file } => {
            match PluginHost::new(PluginLimits::default()).and_then(|h| h.check_file(&file)) {
                Ok(info) => {
                    print!("{info}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
