//! The `vipd` command line: argument parsing and wiring only; the work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write as _;
use std::net::Ipv4Addr;
use vipd::assemble::{Assembly, Plugins};
use vipd::config::Config;
use vipd::daemon::RunOptions;
use vipd::director::{Layer2, Verdict};
use vipd::replay::ReplayOptions;
use vipd::status::Status;
use vipd::wire::MacAddr;

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
    /// Run the director on the interfaces the config names.
    Run {
        /// The configuration file (TOML). `SIGHUP` reloads it.
        #[arg(long)]
        config: PathBuf,
        /// Turn GRO/GSO/TSO and checksum offloads off on both interfaces instead of refusing to start
        /// (needs CAP_NET_ADMIN).
        #[arg(long)]
        fix_offloads: bool,
        /// Log lines as text for people, or as one JSON object per line for log shippers.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Feed pcap captures through the packet path and write what the director sends.
    Replay {
        /// The configuration file (TOML); real servers need a static `mac`.
        #[arg(long)]
        config: PathBuf,
        /// Frames arriving on the outside interface (from clients).
        #[arg(long)]
        outside: Option<PathBuf>,
        /// Frames arriving on the inside interface (from real servers).
        #[arg(long)]
        inside: Option<PathBuf>,
        /// Where to write the frames the director sends out of the outside interface.
        #[arg(long)]
        write_outside: Option<PathBuf>,
        /// Where to write the frames the director sends out of the inside interface.
        #[arg(long)]
        write_inside: Option<PathBuf>,
        /// The plugins folder whose policies and binders serve the replay, instead of the config's
        /// `[director] plugins`.
        #[arg(long, value_name = "DIR")]
        plugins: Option<PathBuf>,
        /// The director's outside MAC address in the replay.
        #[arg(long, default_value = "02:00:00:00:00:01")]
        outside_mac: MacAddr,
        /// The director's inside MAC address in the replay.
        #[arg(long, default_value = "02:00:00:00:00:02")]
        inside_mac: MacAddr,
        /// Print nothing per frame, only the totals.
        #[arg(long, short)]
        quiet: bool,
        /// Compare policies instead: replay the capture once per LABEL=FILE.wasm (repeat it), each policy
        /// serving every virtual port, and print how each spread the connections over the real servers,
        /// its calls and their mean cost, and how often each pair chose the same server.
        #[arg(long = "policy", value_name = "LABEL=FILE.wasm")]
        policies: Vec<vipd::compare::PolicyUnderTest>,
        /// With --policy: print the comparison as JSON.
        #[arg(long, requires = "policies")]
        json: bool,
    },
    /// Work with policy plugins (WebAssembly components).
    Plugin {
        #[command(subcommand)]
        cmd: PluginCommand,
    },
    /// Show the running director's virtual machines, bindings and real servers (like `ipvsadm -Ln --stats`).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the `/status` JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vipd.8 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The active/standby pair (`[sync]`; keepalived's notify and track scripts): `active` makes this
    /// director serve with its synced table and announce the virtual addresses, `standby` stops it
    /// forwarding, `status` prints the role and exits 0 only when vipd runs and is synced (a track script).
    /// With `[cluster]`, `drain` withdraws the announced routes, serves what still arrives for `drain_time`,
    /// then stops.
    Ha {
        /// active, standby, drain or status.
        #[arg(value_parser = ["active", "standby", "drain", "status"])]
        action: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Print the `/ha` JSON (status).
        #[arg(long)]
        json: bool,
    },
    /// Operator control of a real server: drain (no new connections), enable, or disable (as if failed).
    Real {
        /// drain, enable or disable.
        #[arg(value_parser = ["drain", "enable", "disable"])]
        action: String,
        /// The real server's name in the config.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// How `vipd run` writes its log lines (to stderr, which systemd sends to the journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a ready-to-build Rust selection policy project NAME (the two-choices template: a policy, its
    /// native unit tests, the SDK dependency), then build it with
    /// `cargo build --target wasm32-wasip2 --release`.
    New {
        /// The project and plugin name: lowercase letters, digits and '-', starting with a letter.
        name: String,
        /// The folder to create the project in (as DIR/NAME).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The vipd plugin SDK the project depends on (its folder); default: the SDK of the vipd source tree
        /// this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Say whether FILE is a valid vipd plugin and which worlds it implements, or why not (exit 1).
    Check {
        /// The plugin file (NAME.wasm).
        file: PathBuf,
    },
}

/// Where the running director's admin API is.
#[derive(clap::Args)]
struct ApiArgs {
    /// The admin API address (`[director] listen`).
    #[arg(long, default_value_t = vipd::config::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// The bearer token (`[director] admin_token`).
    #[arg(long)]
    token: Option<String>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Plugin { cmd } => plugin(cmd),
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "vipd", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { out } => match man_pages(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vipd man: {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            fix_offloads,
            log_format,
        } => {
            init_logging(log_format);
            match vipd::daemon::run(&RunOptions {
                config,
                fix_offloads,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vipd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay {
            config,
            outside,
            inside,
            write_outside,
            write_inside,
            plugins,
            outside_mac,
            inside_mac,
            quiet,
            policies,
            json,
        } => {
            let layer2 = Layer2 {
                outside_mac,
                inside_mac,
                inside_ip: Ipv4Addr::UNSPECIFIED,
            };
            let options = ReplayOptions {
                outside,
                inside,
                write_outside,
                write_inside,
                layer2,
            };
            if !policies.is_empty() {
                return compare(&config, &policies, &options, json);
            }
            replay(&config, plugins.as_deref(), &options, quiet)
        }
        Command::Status { api, json } => api_call(&api, "GET", "/status", |body| {
            if json {
                return body.to_owned();
            }
            match serde_json::from_str::<Status>(body) {
                Ok(status) => status.to_string(),
                Err(e) => {
                    format!("{body}\n(vipd status: cannot read this /status document: {e})\n")
                }
            }
        }),
        Command::Ha { action, api, json } => ha(&action, &api, json),
        Command::Real { action, name, api } => {
            let path = format!("/reals/{name}/{action}");
            api_call(&api, "POST", &path, |_| format!("{name}: {action} done\n"))
        }
    }
}

/// `vipd ha`: a role change, or the status, whose exit code a keepalived track script reads (0: running
/// and synced; 1: not running, not answering, or a standby that does not hold its peers' connections yet).
fn ha(action: &str, api: &ApiArgs, json: bool) -> ExitCode {
    if action != "status" {
        let path = format!("/ha/{action}");
        return api_call(api, "POST", &path, |body| {
            match serde_json::from_str::<serde_json::Value>(body) {
                Ok(v) if v.get("withdrawn").is_some() => format!(
                    "draining: withdrew {}; stopping in {:.0} s\n",
                    v["withdrawn"],
                    v["draining_seconds"].as_f64().unwrap_or(0.0)
                ),
                Ok(v) => format!(
                    "{} (was {}; {} connections)\n",
                    v["role"].as_str().unwrap_or("?"),
                    v["previous"].as_str().unwrap_or("?"),
                    v["connections"]
                ),
                Err(_) => body.to_owned(),
            }
        });
    }
    let status = match vipd::admin::request(api.listen, "GET", "/ha", api.token.as_deref()) {
        Ok((200, body)) => match serde_json::from_str::<vipd::admin::HaStatus>(&body) {
            Ok(status) => (status, body),
            Err(e) => {
                eprintln!("vipd: GET /ha: cannot read the answer: {e}");
                return ExitCode::FAILURE;
            }
        },
        Ok((code, body)) => {
            eprintln!("vipd: GET /ha: HTTP {code}: {}", body.trim());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("vipd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (status, body) = status;
    if json {
        print!("{body}");
    } else {
        println!(
            "{}{}, {}, {} connections",
            status.role,
            if status.pair {
                ""
            } else {
                " (no [sync]: alone)"
            },
            if status.synced {
                "synced"
            } else {
                "not synced"
            },
            status.connections
        );
    }
    if status.synced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One admin API request; prints `ok(body)` on success, the answer on stderr otherwise.
fn api_call(api: &ApiArgs, method: &str, path: &str, ok: impl FnOnce(&str) -> String) -> ExitCode {
    match vipd::admin::request(api.listen, method, path, api.token.as_deref()) {
        Ok((code, body)) if (200..300).contains(&code) => {
            print!("{}", ok(&body));
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprintln!("vipd: {method} {path}: HTTP {code}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vipd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// `vipd.8` for the command and `vipd-SUBCOMMAND.8` for each visible subcommand (section 8: a daemon and
/// its administration commands), from the same definitions as `--help`.
fn man_pages(out: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let cli = Cli::command().version(env!("CARGO_PKG_VERSION"));
    let write = |cmd: clap::Command, file: String| -> std::io::Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
        std::fs::write(out.join(file), page)
    };
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vipd-{}", sub.get_name());
        write(sub.clone().name(name.clone()), format!("{name}.8"))?;
    }
    write(cli, "vipd.8".to_owned())
}

/// `vipd replay --policy ...`: the comparison table, or its JSON.
fn compare(
    config: &std::path::Path,
    policies: &[vipd::compare::PolicyUnderTest],
    options: &ReplayOptions,
    json: bool,
) -> ExitCode {
    match vipd::compare::compare(config, policies, options) {
        Ok(c) if json => match serde_json::to_string_pretty(&c) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vipd replay: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(c) => {
            print!("{c}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vipd replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vipd replay`: the policy of each virtual port, one line per input frame (what arrived, what the
/// director did, what left), then totals. The director is assembled as `vipd run` would assemble it.
fn replay(
    path: &std::path::Path,
    plugins: Option<&std::path::Path>,
    options: &ReplayOptions,
    quiet: bool,
) -> ExitCode {
    let assembly = match assemble(path, plugins) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vipd replay: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    for used in &assembly.policies {
        let _ = writeln!(stdout, "{used}");
    }
    let mut closed = false;
    let result = vipd::replay::replay(assembly, options, |e| {
        if quiet || closed {
            return;
        }
        let t = e.time.as_secs_f64();
        let verdict = match e.verdict {
            Verdict::Forward(to) => format!("-> {}", to.as_str()),
            Verdict::Reply(to) => format!("reply {}", to.as_str()),
            Verdict::Drop(reason) => format!("drop {}", reason.as_str()),
            Verdict::Consumed => "consumed".to_string(),
            Verdict::ForwardAndReply { forward, reply } => {
                format!("-> {} + reply {}", forward.as_str(), reply.as_str())
            }
        };
        let line = match &e.after {
            Some(after) => writeln!(
                stdout,
                "{t:10.6} {:7} {}  {verdict}  {after}",
                e.from.as_str(),
                e.before
            ),
            None => writeln!(
                stdout,
                "{t:10.6} {:7} {}  {verdict}",
                e.from.as_str(),
                e.before
            ),
        };
        // A closed pipe (`vipd replay ... | head`) ends the printing, not the replay.
        closed = line.is_err();
    });
    match result {
        Ok(summary) => {
            let c = &summary.counters;
            let _ = writeln!(
                stdout,
                "frames in: outside {} inside {}; out: outside {} inside {}; connections created {}, syn resends {}",
                summary.frames_in.outside,
                summary.frames_in.inside,
                summary.frames_out.outside,
                summary.frames_out.inside,
                c.connections_created,
                c.syn_resends
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vipd replay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vipd check`: exit 0 with a summary, or 1 with one problem per line on stderr. The config is assembled
/// as `vipd run` would assemble it: policies and binders are loaded from its plugins folder.
fn check(path: &std::path::Path) -> ExitCode {
    match assemble(path, None) {
        Ok(assembly) => {
            let table = &assembly.bindings;
            println!(
                "{}: ok: {} virtual machines, {} ports, {} real servers",
                path.display(),
                table.virtuals.len(),
                table.ports.len(),
                table.reals.len()
            );
            for used in &assembly.policies {
                println!("  {used}");
            }
            for shadow in &assembly.shadows {
                if let Some(used) = assembly.policies.get(shadow.port_id as usize) {
                    println!(
                        "  {} {}/{}: shadow policy {} (asked too, never applied)",
                        used.virtual_name,
                        std::net::SocketAddr::new(used.address, used.port),
                        used.protocol.as_str(),
                        shadow.name
                    );
                }
            }
            for warning in assembly.cluster_warnings() {
                println!("  warning: {warning}");
            }
            let director = &assembly.config.director;
            if let vipd::config::Offload::Xdp(mode) = director.offload {
                println!(
                    "  offload: xdp (xdp_mode {}), at most {} established connections translated in the kernel",
                    mode.as_str(),
                    director.offload_connections
                );
                if let Err(why) = vipd::offload::built() {
                    println!("  warning: offload = \"xdp\" cannot start: {why}");
                }
                if director.syn_proxy {
                    println!(
                        "  warning: with syn_proxy = true no connection is offloaded (the SYN proxy translates \
                         sequence numbers, which the XDP program does not)"
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config at `path` assembled with the plugins of `plugins` (or of its `[director] plugins`).
fn assemble(path: &std::path::Path, plugins: Option<&std::path::Path>) -> anyhow::Result<Assembly> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugins = Plugins::start(&config, plugins)?;
    Assembly::new(path, config, plugins.as_ref())
}

/// The template of `vipd plugin new`: the files of examples/custom-policy, compiled in.
const TEMPLATE_CARGO: &str = include_str!("../../examples/custom-policy/Cargo.toml");
const TEMPLATE_LIB: &str = include_str!("../../examples/custom-policy/src/lib.rs");
const TEMPLATE_GITIGNORE: &str = include_str!("../../examples/custom-policy/.gitignore");
/// Where the template's Cargo.toml points at the SDK.
const TEMPLATE_SDK: &str = "path = \"../../plugin-sdk\"";

/// `vipd plugin new NAME`: DIR/NAME with the template, its package named NAME and its SDK dependency on
/// `sdk` (absolute). Refuses an existing folder.
fn new_plugin(
    name: &str,
    dir: &std::path::Path,
    sdk: Option<&std::path::Path>,
) -> anyhow::Result<PathBuf> {
    use anyhow::{Context, bail};
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?}: a plugin name is lowercase letters, digits and '-', starting with a letter"
        );
    }
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk")),
    };
    let sdk = std::fs::canonicalize(&sdk)
        .ok()
        .filter(|p| p.join("Cargo.toml").exists())
        .with_context(|| {
            format!(
                "no vipd plugin SDK at {}: give --sdk PATH (the plugin-sdk folder of a vipd checkout)",
                sdk.display()
            )
        })?;
    let project = dir.join(name);
    if project.exists() {
        bail!("{} exists already", project.display());
    }
    std::fs::create_dir_all(project.join("src"))
        .with_context(|| format!("creating {}", project.display()))?;
    let cargo = TEMPLATE_CARGO
        .replace("name = \"custom-policy\"", &format!("name = \"{name}\""))
        .replace(
            "custom_policy.wasm",
            &format!("{}.wasm", name.replace('-', "_")),
        )
        .replace(
            TEMPLATE_SDK,
            &format!("path = {:?}", sdk.display().to_string()),
        );
    for (file, text) in [
        ("Cargo.toml", cargo.as_str()),
        ("src/lib.rs", TEMPLATE_LIB),
        (".gitignore", TEMPLATE_GITIGNORE),
    ] {
        let path = project.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(project)
}

/// `vipd plugin check`: what the file implements, or why it is no vipd plugin.
fn plugin(cmd: PluginCommand) -> ExitCode {
    use vipd::plugin::{PluginHost, PluginLimits};
    match cmd {
        PluginCommand::New { name, dir, sdk } => match new_plugin(&name, &dir, sdk.as_deref()) {
            Ok(project) => {
                let lib = name.replace('-', "_");
                println!(
                    "{}: a selection policy project. Next:\n  cd {}\n  cargo test\n  \
                     cargo build --target wasm32-wasip2 --release\n  \
                     vipd plugin check target/wasm32-wasip2/release/{lib}.wasm",
                    project.display(),
                    project.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vipd plugin new: {e:#}");
                ExitCode::FAILURE
            }
        },
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
