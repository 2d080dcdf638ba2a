//! The OpenAPI document of the admin API, served at `/v1/openapi.json`.
//! docs/api.md is the prose version; keep the two in step.

use axum::Json;
use serde_json::{Value, json};

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(spec())
}

fn op(summary: &str, responses: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    for (code, description) in responses {
        let mut resp = json!({"description": description});
        if code.starts_with('4') || code.starts_with('5') {
            resp["content"] =
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
        }
        r.insert((*code).to_owned(), resp);
    }
    json!({"summary": summary, "responses": r})
}

/// With a token set every `/v1` call needs it (the probes do not): each
/// `/v1` operation documents its 401, and the document says the scheme.
fn with_auth(mut doc: Value) -> Value {
    let unauthorized = op("", &[("401", "token required")])["responses"]["401"].clone();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, ops) in paths.iter_mut() {
            let Some(ops) = ops.as_object_mut() else {
                continue;
            };
            for op in ops.values_mut() {
                if path.starts_with("/v1/") {
                    op["responses"]["401"] = unauthorized.clone();
                } else {
                    op["security"] = json!([]);
                }
            }
        }
    }
    doc["security"] = json!([{"bearer": []}]);
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    doc
}

fn spec() -> Value {
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let version =
        json!({"name": "version", "in": "path", "required": true, "schema": {"type": "integer"}});
    let mut upload = op(
        "Upload a plugin version (body: the component's bytes)",
        &[
            ("201", "stored"),
            ("200", "already stored"),
            ("400", "not a kwasm plugin"),
            ("401", "token required"),
            ("413", "too large"),
        ],
    );
    upload["requestBody"] = json!({"required": true, "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}});
    upload["parameters"] = json!([name]);
    let mut put = op(
        "Create or update a pipeline (plugin or config only: hot deploy)",
        &[
            ("200", "stored"),
            ("400", "invalid"),
            ("401", "token required"),
            ("404", "unknown plugin"),
            ("409", "declared in a config file"),
            ("413", "body over 512 KiB"),
        ],
    );
    put["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pipeline"}}}});
    put["parameters"] = json!([name]);
    let with = |mut o: Value, params: Value| {
        o["parameters"] = params;
        o
    };
    with_auth(json!({
        "openapi": "3.0.3",
        "info": {"title": "kwasm admin API", "version": "1"},
        "paths": {
            "/healthz": {"get": op("Liveness", &[("200", "alive")])},
            "/readyz": {"get": op("Readiness", &[("200", "ready"), ("503", "not ready, with the reason")])},
            "/metrics": {"get": op("Prometheus metrics", &[("200", "text exposition format")])},
            "/v1/assignments": {"get": op("Partitions this host holds, per pipeline", &[("200", "assignments")])},
            "/v1/plugins": {"get": op("List plugins and versions", &[("200", "plugins")])},
            "/v1/plugins/{name}": {"get": with(op("One plugin's versions", &[("200", "plugin"), ("404", "unknown")]), json!([name])), "post": upload},
            "/v1/plugins/{name}/versions/{version}": {"delete": with(op("Delete a version", &[("204", "deleted"), ("401", "token required"), ("404", "unknown"), ("409", "in use by a pipeline on some host (registry, bare name on the newest version, or a config file); the message names them")]), json!([name, version]))},
            "/v1/pipelines": {"get": op("List pipelines", &[("200", "pipelines")])},
            "/v1/pipelines/{name}": {
                "get": with(op("One pipeline", &[("200", "pipeline"), ("404", "unknown")]), json!([name])),
                "put": put,
                "delete": with(op("Delete a pipeline", &[("204", "deleted"), ("401", "token required"), ("404", "unknown"), ("409", "declared in a config file")]), json!([name])),
            },
            "/v1/pipelines/{name}/pause": {"post": with(op("Stop a pipeline on every host", &[("200", "paused"), ("401", "token required"), ("404", "unknown")]), json!([name]))},
            "/v1/pipelines/{name}/resume": {"post": with(op("Restart a paused pipeline", &[("200", "resumed"), ("401", "token required"), ("404", "unknown")]), json!([name]))},
            "/v1/pipelines/{name}/members": {"get": with(op("Every member of the pipeline's group (as the broker describes it) and its partitions", &[("200", "members"), ("404", "unknown")]), json!([name]))},
            "/v1/pipelines/{name}/progress": {"get": with(op("The group's committed offsets, end offsets, lag and holder of every input partition, from the broker (at most 1 s old)", &[("200", "progress"), ("404", "unknown"), ("503", "the broker did not answer")]), json!([name]))},
            "/v1/pipelines/{name}/dead-letters": {"get": with(op("The newest records of the pipeline's dead-letter topic with their headers (`limit`, 1 to 100, default 20)", &[("200", "dead letters, newest first"), ("400", "bad limit"), ("404", "unknown")]), json!([name]))},
            "/v1/pipelines/{name}/logs": {"get": with(op("The pipeline's newest plugin log lines from every host, after cursor `after` (`limit`, 1 to 1000, default 100)", &[("200", "lines and the next cursor"), ("400", "bad query"), ("404", "unknown, or plugin logs are off on this host")]), json!([name]))},
            "/ui/": {"get": op("The dashboard (HTML; no token needed to load it)", &[("200", "HTML")])},
            "/v1/openapi.json": {"get": op("This document", &[("200", "OpenAPI 3")])},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "enum": ["invalid", "unauthorized", "not_found", "method_not_allowed", "conflict", "too_large", "unavailable"]},
                "message": {"type": "string"}}}}},
            "Pipeline": {"type": "object", "required": ["plugin", "output"], "properties": {
                "plugin": {"type": "string", "description": "name@version or name (newest)"},
                "config": {"type": "object", "additionalProperties": {"type": "string"}},
                "inputs": {"type": "array", "items": {"type": "string"}},
                "input_regex": {"type": "string", "nullable": true},
                "output": {"type": "string"},
                "extra_outputs": {"type": "array", "items": {"type": "string"}, "maxItems": 64,
                    "description": "further topics the plugin may write"},
                "outputs_regex": {"type": "string", "nullable": true,
                    "description": "a regex (POSIX extended, whole name) of further topics the plugin may write"},
                "allow_loop": {"type": "boolean", "description": "let the plugin write the pipeline's own inputs"},
                "limits": {"type": "object", "nullable": true},
                "group_id": {"type": "string", "nullable": true},
                "dead_letter_topic": {"type": "string", "nullable": true},
                "retry": {"type": "object"},
                "batch": {"type": "object"}}},
        }},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v1_operation_documents_its_401_and_probes_need_no_token() {
        let doc = spec();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                let open = !path.starts_with("/v1/");
                assert_eq!(op["security"] == json!([]), open, "{method} {path}");
                assert_eq!(op["responses"]["401"].is_object(), !open, "{method} {path}");
            }
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/v1/pipelines/{name}"]["put"]["responses"]["413"].is_object());
    }
}
