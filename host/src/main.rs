//! The `kwasm` command line.

mod cli;
mod local_test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// kwasm: WebAssembly plugins over Kafka consumer groups.
#[derive(Parser)]
#[command(
    name = "kwasm",
    version,
    about,
    after_help = "The client commands (plugin, pipeline, status) talk to a host's admin API: \
                  --url (env KWASM_URL, default http://127.0.0.1:8080) and --token (env KWASM_TOKEN)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,kwasm=debug`.
    #[arg(long, env = "KWASM_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "KWASM_LOG_JSON", global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: join the pipelines' consumer groups and process.
    Serve {
        /// The host's TOML config file (pipelines, Kafka, limits).
        #[arg(long, env = "KWASM_CONFIG")]
        config: PathBuf,
    },
    /// Run everything locally with no Kafka to install: an in-process mock
    /// Kafka cluster, a demo topic with sample traffic, the example `redact`
    /// pipeline, and the admin API.
    Dev {
        /// Where the admin API listens.
        #[arg(long, env = "KWASM_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
        admin_listen: String,
        /// Folder of the example plugins' .wasm files (scripts/run builds them).
        #[arg(long, env = "KWASM_PLUGIN_DIR")]
        plugin_dir: std::path::PathBuf,
        /// Use these Kafka brokers instead of the in-process mock cluster.
        #[arg(long, env = "KWASM_BROKERS")]
        brokers: Option<String>,
        /// Sample orders produced per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
    /// Run a plugin locally on JSON-lines messages and print its outputs as
    /// JSON lines (no Kafka needed).
    Test(local_test::TestArgs),
    /// Create a new plugin crate, ready to build with `cargo build --release`.
    New(cli::scaffold::NewArgs),
    /// Upload and list plugins (through a host's admin API).
    Plugin(cli::plugin::PluginArgs),
    /// Create, list, pause, resume and delete pipelines (through a host's
    /// admin API).
    Pipeline(cli::pipeline::PipelineArgs),
    /// Show which host holds which partition of every pipeline, and its lag
    /// (through a host's admin API).
    Status(cli::status::StatusArgs),
    /// Print a pipeline's plugin log lines from every host (`-f` follows);
    /// needs `registry.plugin_logs = true` on the hosts.
    Logs(cli::logs::LogsArgs),
    /// Print a shell completion script: `kwasm completions bash >
    /// /etc/bash_completion.d/kwasm` (or zsh, fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `kwasm man > kwasm.1; man ./kwasm.1`.
    Man,
    /// Probe a host's `/healthz` (or `/readyz`): exit 0 on 200, else 1. The
    /// container image's HEALTHCHECK (the image has no shell or curl).
    Health(cli::health::HealthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Dev {
            admin_listen,
            plugin_dir,
            brokers,
            rate,
        } => dev(kwasm_host::dev::DevOptions {
            admin_listen,
            plugin_dir,
            brokers,
            rate_per_sec: rate,
        }),
        Command::Test(args) => local_test::run(args),
        Command::New(args) => cli::scaffold::run(args).map_err(Into::into),
        Command::Plugin(args) => cli::plugin::run(args).map_err(Into::into),
        Command::Pipeline(args) => cli::pipeline::run(args).map_err(Into::into),
        Command::Status(args) => cli::status::run(args).map_err(Into::into),
        Command::Health(args) => cli::health::run(args).map_err(Into::into),
        Command::Logs(args) => cli::logs::run(args).map_err(Into::into),
        Command::Completions { shell } => {
            cli::generate::completions(shell, Cli::command()).map_err(Into::into)
        }
        Command::Man => cli::generate::man(Cli::command()).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = kwasm_host::config::Config::load_with_env(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(kwasm_host::serve::serve(config))?;
    Ok(())
}

fn dev(options: kwasm_host::dev::DevOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(kwasm_host::dev::run(options))?;
    Ok(())
}

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a file or a log
    // collector make every field unsearchable.
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // Plugin lines at every level go to the logs topic when a host turns
    // it on (kwasm_host::logs), whatever the host's own log filter says;
    // its own filter keeps every other callsite as cheap as before.
    let plugin_lines = kwasm_host::logs::PluginLogLayer.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(
            kwasm_host::logs::layer::PLUGIN_TARGET,
            tracing::Level::TRACE,
        ),
    );
    // Repeated per-message warnings: the first per pipeline and interval
    // in full, then one summary line (kwasm_host::logs::repeats).
    let repeats = kwasm_host::logs::repeats::RepeatFilter::default();
    kwasm_host::logs::repeats::spawn_reporter(&repeats);
    let registry = tracing_subscriber::registry().with(plugin_lines);
    if json {
        registry
            .with(fmt.json().with_filter(filter.and(repeats)))
            .init();
    } else {
        registry.with(fmt.with_filter(filter.and(repeats))).init();
    }
}
