//! `kwasm plugin deploy|list|delete`: upload components to the registry shared by
//! every host, and see what it holds.

use std::path::PathBuf;

use super::model::{DeployedPlugin, PluginList};
use super::table::{Align, Table, human_bytes, short_digest, utc_minutes};
use super::{CliError, ClientArgs, emit, read_file};

/// Arguments of `kwasm plugin`.
#[derive(clap::Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum PluginCommand {
    /// Upload a WebAssembly component as the next version of plugin NAME.
    ///
    /// The host validates it first (a component of the kwasm world, within
    /// the size limit). Uploading the same bytes again keeps their version.
    /// Pipelines then use it as `NAME` (newest version) or `NAME@VERSION`.
    Deploy {
        /// Plugin name, e.g. `redact`.
        name: String,
        /// The component, e.g. `target/wasm32-wasip2/release/redact.wasm`.
        file: PathBuf,
    },
    /// List the stored plugins and their versions (newest first).
    List,
    /// Delete version VERSION of plugin NAME. Refused while any pipeline on
    /// any host uses it (pinned to it, or naming NAME bare while it is the
    /// newest, config-file pipelines included); the answer names them.
    Delete {
        /// Plugin name.
        name: String,
        /// The version to delete.
        version: u32,
    },
}

/// Runs `kwasm plugin ...`.
pub fn run(args: PluginArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let text = match args.command {
        PluginCommand::Deploy { name, file } => {
            let wasm = read_file(&file)?;
            let (plugin, created) = client.deploy_plugin(&name, wasm)?;
            render_deployed(&plugin, created)
        }
        PluginCommand::List => render_list(&client.list_plugins()?),
        PluginCommand::Delete { name, version } => {
            client.delete_plugin_version(&name, version)?;
            format!("deleted {name} version {version}\n")
        }
    };
    emit(&text)
}

/// What `deploy` prints: whether a version was made, then its fields.
fn render_deployed(plugin: &DeployedPlugin, created: bool) -> String {
    let headline = if created {
        format!("deployed {} version {}", plugin.name, plugin.version)
    } else {
        format!(
            "unchanged: {} version {} already has these bytes",
            plugin.name, plugin.version
        )
    };
    format!(
        "{headline}\n  name:    {}\n  version: {}\n  digest:  {}\n  size:    {} bytes\n",
        plugin.name, plugin.version, plugin.digest, plugin.size_bytes
    )
}

/// What `list` prints: one line per version, newest version first.
fn render_list(list: &PluginList) -> String {
    if list.plugins.is_empty() {
        return "no plugins (upload one with `kwasm plugin deploy NAME FILE.wasm`)\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("VERSION", Align::Right),
        ("SIZE", Align::Right),
        ("DIGEST", Align::Left),
        ("CREATED", Align::Left),
    ]);
    let mut plugins: Vec<_> = list.plugins.iter().collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    for plugin in plugins {
        let mut versions: Vec<_> = plugin.versions.iter().collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        if versions.is_empty() {
            table.push(vec![plugin.name.clone(), "-".into()]);
        }
        for v in versions {
            table.push(vec![
                plugin.name.clone(),
                v.version.to_string(),
                v.size_bytes.map_or_else(|| "-".to_owned(), human_bytes),
                short_digest(&v.digest).to_owned(),
                v.created_ms.map_or_else(|| "-".to_owned(), utc_minutes),
            ]);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_says_whether_a_version_was_made() {
        let plugin = DeployedPlugin {
            name: "redact".into(),
            version: 3,
            digest: "sha256:ab12".into(),
            size_bytes: 86_118,
            created_ms: Some(0),
        };
        assert_eq!(
            render_deployed(&plugin, true),
            "deployed redact version 3\n  name:    redact\n  version: 3\n  digest:  sha256:ab12\n  size:    86118 bytes\n"
        );
        assert!(
            render_deployed(&plugin, false)
                .starts_with("unchanged: redact version 3 already has these bytes\n")
        );
    }

    #[test]
    fn the_list_shows_every_version_newest_first() {
        let list: PluginList = serde_json::from_value(serde_json::json!({"plugins": [
            {"name": "redact", "versions": [
                {"version": 1, "digest": "0123456789abcdef", "size_bytes": 812, "created_ms": 1_700_000_000_000_i64},
                {"version": 2, "digest": "fedcba9876543210", "size_bytes": 86_118, "created_ms": 1_700_000_060_000_i64}
            ]},
            {"name": "filter", "versions": []}
        ]}))
        .expect("documented shape");
        assert_eq!(
            render_list(&list),
            "NAME    VERSION      SIZE  DIGEST        CREATED\n\
             filter        -\n\
             redact        2  84.1 KiB  fedcba987654  2023-11-14 22:14 UTC\n\
             redact        1     812 B  0123456789ab  2023-11-14 22:13 UTC\n"
        );
        assert_eq!(
            render_list(&PluginList { plugins: vec![] }),
            "no plugins (upload one with `kwasm plugin deploy NAME FILE.wasm`)\n"
        );
    }
}
