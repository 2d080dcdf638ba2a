//! `kwasm logs PIPELINE [-f]`: a pipeline's plugin log lines from every
//! host, as the contacted host read them back from the logs topic
//! (`registry.plugin_logs`; docs/api.md, `.../logs`). With `-f` it asks
//! again every [`FOLLOW_POLL`] for the lines after the last cursor, until
//! interrupted.

use std::time::Duration;

use super::{CliError, ClientArgs, emit};

/// How often `-f` asks for new lines: well inside the 2 s a line may take
/// from a plugin on any host to the terminal.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Arguments of `kwasm logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// The pipeline.
    pipeline: String,
    /// Keep printing new lines as they arrive (Ctrl-C stops).
    #[arg(short, long)]
    follow: bool,
    /// How many of the newest lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `kwasm logs`.
pub fn run(args: LogsArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let first = args.lines.clamp(1, 1000);
    let page = client.pipeline_logs(&args.pipeline, 0, first)?;
    emit(&render(&page))?;
    if !args.follow {
        return Ok(());
    }
    let mut cursor = page.cursor;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let page = client.pipeline_logs(&args.pipeline, cursor, 1000)?;
        emit(&render(&page))?;
        cursor = page.cursor;
    }
}

fn render(page: &super::model::LogPage) -> String {
    page.lines.iter().map(|l| format!("{}\n", l.text)).collect()
}
