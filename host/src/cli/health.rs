//! `kwasm health`: asks a host's probe endpoint (`/healthz` by default) and
//! exits 0 only on 200. It is the container image's `HEALTHCHECK`: the
//! image has no shell or curl to run at run time, so the binary probes
//! itself.

use std::time::Duration;

use super::CliError;

/// `kwasm health` arguments.
#[derive(clap::Args)]
pub struct HealthArgs {
    /// The probe to ask: `http://ADDR/healthz` (liveness) or `/readyz`.
    #[arg(
        long,
        env = "KWASM_HEALTH_URL",
        default_value = "http://127.0.0.1:8080/healthz"
    )]
    url: String,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Runs the probe: `Ok` on a 200 answer, else an error saying what came back.
pub fn run(args: HealthArgs) -> Result<(), CliError> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(args.timeout_ms)))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    match agent.get(&args.url).call() {
        Ok(answer) if answer.status() == 200 => Ok(()),
        Ok(answer) => Err(CliError::Health(format!(
            "{} answered {}",
            args.url,
            answer.status()
        ))),
        Err(e) => Err(CliError::Health(format!("{}: {e}", args.url))),
    }
}
