//! The `kwasm` commands that are not the host itself:
//!
//! - client commands of a host's admin HTTP API (docs/api.md): [`plugin`],
//!   [`pipeline`], [`status`]. [`client`] sends the requests, [`model`] holds
//!   the answers as read, [`table`] lays them out; each command module turns
//!   answers into text with pure functions, so rendering is unit-tested
//!   without a server.
//! - [`scaffold`]: `kwasm new`, a plugin crate that builds as is.
//! - [`health`]: `kwasm health`, the container image's HEALTHCHECK.
//! - [`logs`]: `kwasm logs`, plugin log lines from every host.
//!
//! Every command returns a [`CliError`]; `main` prints it as `error: ...` and
//! exits 1.

pub mod client;
pub mod generate;
pub mod health;
pub mod logs;
mod model;
pub mod pipeline;
pub mod plugin;
pub mod scaffold;
pub mod status;
mod table;

use std::io::Write;
use std::path::PathBuf;

use client::{ApiClient, ClientError};

/// Where the admin API is and how to authenticate to it. Flattened into each
/// client command (and global within it), not into `serve`: a `--token` that
/// `serve` accepted and ignored would look like it protects the API.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Base URL of a host's admin API. Any host will do: every host serves
    /// the same plugins and pipelines.
    #[arg(
        long,
        env = "KWASM_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Client options"
    )]
    url: String,
    /// Admin token, sent as `Authorization: Bearer <TOKEN>` on every call.
    /// Needed for every command, reads (`status`, `list`) included, when
    /// the host has `host.admin_token` set.
    #[arg(
        long,
        env = "KWASM_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Client options"
    )]
    token: Option<String>,
}

impl ClientArgs {
    /// A client of the API these options name.
    pub fn client(&self) -> Result<ApiClient, CliError> {
        Ok(ApiClient::new(&self.url, self.token.clone())?)
    }
}

/// Why a command failed. Messages leave out their source: `main` prints
/// the whole chain (`{:#}`), which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the admin API failed, or the API refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file named on the command line could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `kwasm pipeline apply`: the file is not one pipeline.
    #[error("invalid pipeline file {}: {message}", path.display())]
    PipelineFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// `kwasm new` could not create the crate.
    #[error(transparent)]
    Scaffold(#[from] scaffold::ScaffoldError),
    /// Writing the answer failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
    /// `kwasm health`: the probe did not answer 200.
    #[error("unhealthy: {0}")]
    Health(String),
}

/// Reads a file named on the command line.
fn read_file(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a command's answer to standard output. A closed pipe
/// (`kwasm plugin list | head -1`) is not an error.
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}
