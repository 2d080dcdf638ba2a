//! `kwasm pipeline apply|list|pause|resume|delete`: manage the pipelines
//! every host runs.
//!
//! `apply` reads one pipeline from a TOML or JSON file, with the fields of a
//! `[[pipeline]]` table of the host config (docs/api.md, `PUT` body) plus
//! `name`, and PUTs it. Fields are passed through as written: the host
//! validates them and fills in the defaults, so this binary never disagrees
//! with it about what a field means.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::model::{Pipeline, PipelineList};
use super::table::{Align, Table};
use super::{CliError, ClientArgs, emit, read_file};

/// Arguments of `kwasm pipeline`.
#[derive(clap::Args)]
pub struct PipelineArgs {
    #[command(subcommand)]
    command: PipelineCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum PipelineCommand {
    /// Create or replace a pipeline from a TOML or JSON file.
    ///
    /// The file holds one pipeline: `name` plus the fields of a `[[pipeline]]`
    /// table of the host config (`plugin` as `NAME` or `NAME@VERSION`,
    /// `inputs` or `input_regex`, `output`, `config`, `retry`, `batch`, ...).
    /// Changing only `plugin` or `config` is a hot deploy; any other change
    /// restarts the pipeline on every host.
    Apply {
        /// The pipeline file (`.toml` or `.json`; otherwise guessed from the
        /// content).
        file: PathBuf,
    },
    /// List the pipelines, declared through the API or in a host's config.
    List,
    /// Stop a pipeline on every host (its consumer group is left; offsets
    /// stay committed).
    Pause {
        /// Pipeline name.
        name: String,
    },
    /// Start a paused pipeline again where it stopped.
    Resume {
        /// Pipeline name.
        name: String,
    },
    /// Delete a pipeline (every host stops it). Its topics and committed
    /// offsets are left as they are.
    Delete {
        /// Pipeline name.
        name: String,
    },
}

/// Runs `kwasm pipeline ...`.
pub fn run(args: PipelineArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let text = match args.command {
        PipelineCommand::Apply { file } => {
            let (name, body) = read_pipeline_file(&file)?;
            let stored = client.put_pipeline(&name, &body)?;
            format!("applied pipeline {}: {}\n", stored.name, describe(&stored))
        }
        PipelineCommand::List => render_list(&client.list_pipelines()?),
        PipelineCommand::Pause { name } => {
            let stored = client.pause_pipeline(&name)?;
            format!("paused pipeline {}: every host stops it\n", stored.name)
        }
        PipelineCommand::Resume { name } => {
            let stored = client.resume_pipeline(&name)?;
            format!("resumed pipeline {}: {}\n", stored.name, describe(&stored))
        }
        PipelineCommand::Delete { name } => {
            client.delete_pipeline(&name)?;
            format!("deleted pipeline {name}\n")
        }
    };
    emit(&text)
}

/// The file's pipeline name and the `PUT` body (every other field).
fn read_pipeline_file(path: &Path) -> Result<(String, Value), CliError> {
    let bytes = read_file(path)?;
    let invalid = |message: String| CliError::PipelineFile {
        path: path.to_owned(),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".to_owned()))?;
    let format = FileFormat::of(path, &text);
    let fields = parse_pipeline(&text, format).map_err(invalid)?;
    split_name(fields).map_err(invalid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Toml,
    Json,
}

impl FileFormat {
    /// By extension; failing that, a file starting with `{` is JSON.
    fn of(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => FileFormat::Json,
            Some(ext) if ext.eq_ignore_ascii_case("toml") => FileFormat::Toml,
            _ if text.trim_start().starts_with('{') => FileFormat::Json,
            _ => FileFormat::Toml,
        }
    }
}

/// The pipeline's fields as a JSON object. A TOML file may also hold the
/// pipeline as the only `[[pipeline]]` table, as copied from a host config.
fn parse_pipeline(text: &str, format: FileFormat) -> Result<Map<String, Value>, String> {
    let value = match format {
        FileFormat::Json => {
            serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))?
        }
        FileFormat::Toml => {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
            serde_json::to_value(table).map_err(|e| format!("cannot convert TOML to JSON: {e}"))?
        }
    };
    let Value::Object(mut fields) = value else {
        return Err("expected an object with the pipeline's fields".to_owned());
    };
    if fields.len() == 1
        && let Some(Value::Array(tables)) = fields.get("pipeline")
    {
        match tables.as_slice() {
            [Value::Object(only)] => return Ok(only.clone()),
            _ => {
                return Err(format!(
                    "holds {} `[[pipeline]]` tables: apply one at a time",
                    tables.len()
                ));
            }
        }
    }
    fields.remove("pipeline").map_or(Ok(fields), |_| {
        Err("`pipeline` is not a pipeline field: put the fields at the top level".to_owned())
    })
}

/// Takes `name` out of the fields (it goes in the URL). `paused` and `source`
/// are shown by the API but not taken by `PUT`: refuse them here with what to
/// do instead.
fn split_name(mut fields: Map<String, Value>) -> Result<(String, Value), String> {
    if fields.contains_key("paused") {
        return Err(
            "`paused` cannot be applied: use `kwasm pipeline pause NAME` or `resume NAME`"
                .to_owned(),
        );
    }
    if fields.contains_key("source") {
        return Err("`source` is set by the host (`api` or `config`): remove it".to_owned());
    }
    match fields.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => Ok((name, Value::Object(fields))),
        Some(_) => Err("`name` must be a non-empty string".to_owned()),
        None => Err("missing `name`".to_owned()),
    }
}

/// `plugin redact@2, orders -> orders-clean (paused)`.
fn describe(p: &Pipeline) -> String {
    let mut text = format!(
        "plugin {}, {} -> {}",
        p.plugin,
        inputs(p),
        p.output.as_deref().unwrap_or("-")
    );
    if p.paused {
        text.push_str(" (paused)");
    }
    text
}

/// The inputs as one cell: `orders,payments`, or the regex as `/re/`.
fn inputs(p: &Pipeline) -> String {
    match &p.input_regex {
        Some(re) => format!("/{re}/"),
        None if p.inputs.is_empty() => "-".to_owned(),
        None => p.inputs.join(","),
    }
}

/// What `list` prints: one line per pipeline, by name.
fn render_list(list: &PipelineList) -> String {
    if list.pipelines.is_empty() {
        return "no pipelines (create one with `kwasm pipeline apply FILE`)\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PLUGIN", Align::Left),
        ("INPUTS", Align::Left),
        ("OUTPUT", Align::Left),
        ("STATE", Align::Left),
        ("SOURCE", Align::Left),
    ]);
    let mut pipelines: Vec<&Pipeline> = list.pipelines.iter().collect();
    pipelines.sort_by(|a, b| a.name.cmp(&b.name));
    for p in pipelines {
        table.push(vec![
            p.name.clone(),
            p.plugin.clone(),
            inputs(p),
            p.output.clone().unwrap_or_else(|| "-".to_owned()),
            if p.paused { "paused" } else { "active" }.to_owned(),
            p.source.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body_of(text: &str, format: FileFormat) -> Result<(String, Value), String> {
        split_name(parse_pipeline(text, format)?)
    }

    #[test]
    fn a_toml_file_becomes_the_put_body_without_name() {
        let text = r#"
            name = "orders-clean"
            plugin = "redact@2"
            inputs = ["orders"]
            output = "orders-clean"
            config = { fields = "card" }
            retry = { max_attempts = 5 }
        "#;
        let (name, body) = body_of(text, FileFormat::Toml).expect("valid file");
        assert_eq!(name, "orders-clean");
        assert_eq!(
            body,
            json!({"plugin": "redact@2", "inputs": ["orders"], "output": "orders-clean",
                   "config": {"fields": "card"}, "retry": {"max_attempts": 5}})
        );
    }

    #[test]
    fn a_single_pipeline_table_copied_from_a_host_config_is_accepted() {
        let text =
            "[[pipeline]]\nname = \"a\"\nplugin = \"p\"\ninputs = [\"in\"]\noutput = \"out\"\n";
        let (name, body) = body_of(text, FileFormat::Toml).expect("valid file");
        assert_eq!(
            (name.as_str(), body),
            (
                "a",
                json!({"plugin": "p", "inputs": ["in"], "output": "out"})
            )
        );
        let two = format!("{text}{text}");
        assert_eq!(
            body_of(&two, FileFormat::Toml).expect_err("two pipelines"),
            "holds 2 `[[pipeline]]` tables: apply one at a time"
        );
    }

    #[test]
    fn a_json_file_is_passed_through_as_written() {
        let text = r#"{"name": "b", "plugin": "p@1", "input_regex": "orders-.*", "output": "o", "group_id": null}"#;
        let (name, body) = body_of(text, FileFormat::Json).expect("valid file");
        assert_eq!(name, "b");
        assert_eq!(
            body,
            json!({"plugin": "p@1", "input_regex": "orders-.*", "output": "o", "group_id": null})
        );
    }

    #[test]
    fn files_without_a_usable_name_or_with_read_only_fields_are_refused() {
        let cases = [
            (r#"{"plugin": "p"}"#, "missing `name`"),
            (r#"{"name": 3}"#, "`name` must be a non-empty string"),
            (
                r#"{"name": "a", "paused": true}"#,
                "`paused` cannot be applied: use `kwasm pipeline pause NAME` or `resume NAME`",
            ),
            (
                r#"{"name": "a", "source": "api"}"#,
                "`source` is set by the host (`api` or `config`): remove it",
            ),
            ("[1]", "expected an object with the pipeline's fields"),
        ];
        for (text, message) in cases {
            assert_eq!(body_of(text, FileFormat::Json).expect_err(text), message);
        }
        assert!(
            body_of("name = ", FileFormat::Toml)
                .expect_err("bad TOML")
                .starts_with("invalid TOML: ")
        );
    }

    #[test]
    fn the_format_comes_from_the_extension_then_the_content() {
        assert_eq!(
            FileFormat::of(Path::new("p.json"), "name = 1"),
            FileFormat::Json
        );
        assert_eq!(FileFormat::of(Path::new("p.TOML"), "{}"), FileFormat::Toml);
        assert_eq!(
            FileFormat::of(Path::new("p"), "  {\"name\": 1}"),
            FileFormat::Json
        );
        assert_eq!(
            FileFormat::of(Path::new("p.conf"), "name = \"a\""),
            FileFormat::Toml
        );
    }

    #[test]
    fn the_list_shows_plugin_inputs_output_and_state() {
        let list: PipelineList = serde_json::from_value(json!({"pipelines": [
            {"name": "orders-clean", "plugin": "redact@2", "inputs": ["orders"], "input_regex": null,
             "output": "orders-clean", "paused": false, "source": "api"},
            {"name": "audit", "plugin": "filter@1", "inputs": [], "input_regex": "audit-.*",
             "output": "audit-out", "paused": true, "source": "config"}
        ]}))
        .expect("documented shape");
        assert_eq!(
            render_list(&list),
            "NAME          PLUGIN    INPUTS      OUTPUT        STATE   SOURCE\n\
             audit         filter@1  /audit-.*/  audit-out     paused  config\n\
             orders-clean  redact@2  orders      orders-clean  active  api\n"
        );
        assert_eq!(
            describe(&list.pipelines[1]),
            "plugin filter@1, /audit-.*/ -> audit-out (paused)"
        );
    }
}
