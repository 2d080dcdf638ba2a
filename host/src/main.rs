//! The `kwasm` command line.

mod local_test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kwasm: WebAssembly plugins over Kafka consumer groups.
#[derive(Parser)]
#[command(version, about)]
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
    /// Run a plugin locally on JSON-lines messages and print its outputs as
    /// JSON lines (no Kafka needed).
    Test(local_test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Test(args) => local_test::run(args),
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
    let config = kwasm_host::config::Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(kwasm_host::serve::serve(config))?;
    Ok(())
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
