//! The API's handlers: small functions over [`AdminState`].

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::{AdminError, AdminState};
use crate::registry::{
    MemberRecord, PipelineSource, PluginVersion, Registry, StoredPipeline, TopicPartition,
    parse_plugin_ref,
};
use crate::topics::ControlPlane;

type ApiResult<T> = Result<T, AdminError>;

/// axum's `Path`, with its rejection (a segment that is not UTF-8 once
/// decoded, a parameter of the wrong type) in the API's error shape
/// instead of axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(AdminError::Invalid(rejection.body_text())),
        }
    }
}

/// Largest JSON body accepted (`PUT /v1/pipelines/{name}`). A stored
/// pipeline is this body plus its resolved defaults (well under 1 KiB), so
/// it always fits one registry record under librdkafka's default
/// `message.max.bytes` (1 000 000) and the broker's (1 048 588).
pub const MAX_JSON_BODY_BYTES: usize = 512 * 1024;
/// Largest pipeline record written to the registry: a last check, should a
/// body within [`MAX_JSON_BODY_BYTES`] ever serialize larger.
const MAX_PIPELINE_RECORD_BYTES: usize = 900_000;

/// Reads a request body of at most `limit` bytes. A `Content-Length` over
/// the limit is refused before anything is read, and a body without one
/// (chunked) is cut off as soon as it passes the limit, so an oversized
/// request never costs more than `limit` bytes of memory; either way the
/// answer is our JSON 413 naming `limit_name`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    limit_name: &str,
) -> ApiResult<Bytes> {
    let too_large = || {
        metrics::counter!(crate::metrics_names::ADMIN_REFUSED, "reason" => "too_large")
            .increment(1);
        AdminError::TooLarge(format!(
            "the body is larger than this host's limit of {limit} bytes ({limit_name})"
        ))
    };
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| AdminError::Invalid("Content-Length is not a number".into()))?;
        if length > limit as u64 {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = e
            .into_inner()
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some();
        if over {
            too_large()
        } else {
            AdminError::Invalid("the request body could not be read to its end".into())
        }
    })
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    if state.registry.as_ref().is_some_and(|r| !r.caught_up()) {
        problems.push("registry replay not complete".to_owned());
    }
    if !state.view.reconciled() {
        problems.push("pipelines not started yet".to_owned());
    }
    for p in state.view.running() {
        if !p.broker_ok() {
            problems.push(format!("pipeline `{}`: broker unreachable", p.pipeline));
        }
        for (topic, partition, reason) in p.stalled() {
            problems.push(format!(
                "pipeline `{}`: partition {topic}/{partition} stalled: {reason}",
                p.pipeline
            ));
        }
    }
    for (name, e) in state.view.errors() {
        problems.push(format!("pipeline `{name}`: {e}"));
    }
    if problems.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        AdminError::Unavailable(format!("not ready: {}", problems.join("; "))).into_response()
    }
}

pub async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => AdminError::NotFound("metrics are not enabled on this host".into()).into_response(),
    }
}

pub async fn assignments(State(state): State<AdminState>) -> Json<Value> {
    let pipelines: Vec<Value> = state
        .view
        .running()
        .iter()
        .map(|p| {
            let (d, _) = p.deployment().current();
            json!({
                "pipeline": p.pipeline,
                "group_id": p.group_id,
                "plugin": d.plugin.name(),
                "plugin_version": d.version,
                "plugin_digest": d.plugin.digest(),
                "delivery": p.spec().delivery.as_str(),
                "partitions": p.partitions(),
            })
        })
        .collect();
    Json(json!({"host": state.host_id, "pipelines": pipelines}))
}

fn registry(state: &AdminState) -> ApiResult<&Registry> {
    state
        .registry
        .as_ref()
        .ok_or_else(|| AdminError::Unavailable("this host runs without a registry".into()))
}

#[derive(Serialize)]
struct PluginView<'a> {
    name: &'a str,
    versions: Vec<VersionView<'a>>,
}

#[derive(Serialize)]
struct VersionView<'a> {
    version: u32,
    digest: &'a str,
    size_bytes: usize,
    created_ms: i64,
    abi: crate::runtime::PluginAbi,
}

fn version_view(v: &PluginVersion) -> VersionView<'_> {
    VersionView {
        version: v.version,
        digest: &v.digest,
        size_bytes: v.size_bytes,
        created_ms: v.created_ms,
        abi: v.abi,
    }
}

pub async fn list_plugins(State(state): State<AdminState>) -> ApiResult<Json<Value>> {
    let state = registry(&state)?.read();
    let plugins: Vec<PluginView<'_>> = state
        .plugins()
        .map(|(name, versions)| PluginView {
            name,
            versions: versions.into_iter().map(version_view).collect(),
        })
        .collect();
    Ok(Json(json!({ "plugins": plugins })))
}

pub async fn get_plugin(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let reg = registry(&state)?.read();
    let versions = reg
        .plugin(&name)
        .ok_or_else(|| AdminError::NotFound(format!("no plugin named `{name}`")))?;
    let view = PluginView {
        name: &name,
        versions: versions.into_iter().map(version_view).collect(),
    };
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

pub async fn upload_plugin(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let registry = registry(&state)?;
    check_name(&name, "plugin")?;
    let max = registry.config().max_plugin_bytes;
    let bytes = read_body(&headers, body, max, "registry.max_plugin_bytes").await?;
    if bytes.is_empty() {
        return Err(AdminError::Invalid(
            "the body is empty: send the plugin's .wasm bytes".into(),
        ));
    }
    // Validation compiles the component; keep it off the async workers.
    let runtime = state.runtime.clone();
    let (n, b) = (name.clone(), bytes.clone());
    let abi = tokio::task::spawn_blocking(move || runtime.load(&n, &b).map(|p| p.abi()))
        .await
        .map_err(|e| AdminError::Unavailable(format!("validation failed to run: {e}")))?
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    let (version, created) = registry.put_plugin(&name, &bytes, abi).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "name": version.name, "version": version.version, "digest": version.digest,
        "size_bytes": version.size_bytes, "created_ms": version.created_ms,
        "abi": version.abi,
    });
    Ok((status, Json(body)).into_response())
}

/// Refuses (409) to delete a version anything uses: a registry pipeline
/// pinned to it or naming the plugin bare while it is the newest, or any
/// pipeline a host runs on it, config-file ones included (from this host's
/// own view and the records other hosts publish to the members topic).
pub async fn delete_plugin_version(
    State(state): State<AdminState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let registry = registry(&state)?;
    let version: u32 = version
        .parse()
        .map_err(|_| AdminError::Invalid(format!("version `{version}` must be a whole number")))?;
    {
        let reg = registry.read();
        reg.plugin_version(&name, Some(version)).ok_or_else(|| {
            AdminError::NotFound(format!("no version {version} of plugin `{name}`"))
        })?;
        let local = running_member_records(&state.view, &state.host_id);
        let users = reg.users_of(&name, version, &local, now_ms());
        if !users.is_empty() {
            let users: Vec<String> = users.iter().map(ToString::to_string).collect();
            return Err(AdminError::Conflict(format!(
                "plugin `{name}` version {version} is in use by {}; point them at another version first",
                users.join("; ")
            )));
        }
    }
    registry.delete_plugin_version(&name, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What this host runs, one record per pipeline, as it publishes it to the
/// members topic (`serve::publish_members`) and as the delete check reads
/// its own view.
pub(crate) fn running_member_records(
    view: &crate::pipeline::manager::ManagerView,
    host: &str,
) -> Vec<MemberRecord> {
    let config_names = view.config_names();
    let now = now_ms();
    view.running()
        .iter()
        .map(|status| {
            let (deployment, _) = status.deployment().current();
            MemberRecord {
                host: host.to_owned(),
                pipeline: status.pipeline.clone(),
                group_id: status.group_id.clone(),
                partitions: status
                    .partitions()
                    .into_iter()
                    .map(|p| TopicPartition {
                        topic: p.topic,
                        partition: p.partition,
                    })
                    .collect(),
                updated_ms: now,
                plugin: status.spec().plugin.clone(),
                plugin_name: deployment.plugin.name().to_owned(),
                plugin_version: deployment.version,
                source: if config_names.contains(&status.pipeline) {
                    PipelineSource::Config
                } else {
                    PipelineSource::Api
                },
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn list_pipelines(State(state): State<AdminState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "pipelines": all_pipelines(&state)? })))
}

/// Registry pipelines, plus this host's config-file ones (source `config`).
pub(super) fn all_pipelines(state: &AdminState) -> ApiResult<Vec<StoredPipeline>> {
    let config_names = state.view.config_names();
    let mut out: Vec<StoredPipeline> = registry(state)?
        .read()
        .pipelines()
        .filter(|p| !config_names.contains(&p.spec.name))
        .cloned()
        .collect();
    for status in state.view.running() {
        if config_names.contains(&status.pipeline) {
            out.push(config_pipeline_view(&status));
        }
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(out)
}

fn config_pipeline_view(status: &crate::pipeline::PipelineStatus) -> StoredPipeline {
    crate::registry::state::stored_from_spec(status.spec())
}

pub async fn get_pipeline(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<StoredPipeline>> {
    all_pipelines(&state)?
        .into_iter()
        .find(|p| p.spec.name == name)
        .map(Json)
        .ok_or_else(|| AdminError::NotFound(format!("no pipeline named `{name}`")))
}

pub async fn put_pipeline(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StoredPipeline>> {
    let registry = registry(&state)?;
    check_name(&name, "pipeline")?;
    refuse_config_pipeline(&state, &name)?;
    let body = read_body(&headers, body, MAX_JSON_BODY_BYTES, "the JSON body limit").await?;
    // `paused` and `source` are the registry's, not the caller's: a body
    // copied from a GET may carry them, and they are ignored.
    let stored: StoredPipeline = serde_json::from_slice(&body)
        .map_err(|e| AdminError::Invalid(format!("invalid pipeline JSON: {e}")))?;
    let mut spec = stored.spec;
    if !spec.name.is_empty() && spec.name != name {
        return Err(AdminError::Invalid(format!(
            "the body names pipeline `{}` but the path `{name}`",
            spec.name
        )));
    }
    spec.name = name;
    let (plugin, version) = parse_plugin_ref(&spec.plugin).map_err(AdminError::Invalid)?;
    let resolved = registry
        .read()
        .plugin_version(plugin, version)
        .map(|v| v.version)
        .ok_or_else(|| {
            AdminError::NotFound(format!("no plugin `{}` in the registry", spec.plugin))
        })?;
    spec.plugin = format!("{plugin}@{resolved}");
    // The same checks as the config file's and the registry replay's,
    // naming the field.
    spec.validate(&ControlPlane::new(registry.config()))
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    // Store the defaults resolved, so every host and reader sees the same.
    spec.group_id = Some(spec.group_id());
    spec.dead_letter_topic = Some(spec.dead_letter_topic());
    // Keep pause state across an update.
    let paused = registry
        .read()
        .pipeline(&spec.name)
        .is_some_and(|old| old.paused);
    let p = StoredPipeline {
        spec,
        paused,
        source: PipelineSource::Api,
    };
    check_record_size(&p)?;
    registry.put_pipeline(&p).await?;
    Ok(Json(p))
}

/// A pipeline record the producer would refuse is a 413 now, not a 503
/// from Kafka later.
fn check_record_size(p: &StoredPipeline) -> ApiResult<()> {
    let size = serde_json::to_vec(p).map_or(usize::MAX, |v| v.len());
    if size > MAX_PIPELINE_RECORD_BYTES {
        return Err(AdminError::TooLarge(format!(
            "the pipeline would be stored as {size} bytes, over the registry record limit of \
             {MAX_PIPELINE_RECORD_BYTES}"
        )));
    }
    Ok(())
}

pub async fn delete_pipeline(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let registry = registry(&state)?;
    refuse_config_pipeline(&state, &name)?;
    if registry.read().pipeline(&name).is_none() {
        return Err(AdminError::NotFound(format!("no pipeline named `{name}`")));
    }
    registry.delete_pipeline(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause_pipeline(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<StoredPipeline>> {
    set_paused(&state, &name, true).await
}

pub async fn resume_pipeline(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<StoredPipeline>> {
    set_paused(&state, &name, false).await
}

async fn set_paused(
    state: &AdminState,
    name: &str,
    paused: bool,
) -> ApiResult<Json<StoredPipeline>> {
    let registry = registry(state)?;
    refuse_config_pipeline(state, name)?;
    let mut p = registry
        .read()
        .pipeline(name)
        .cloned()
        .ok_or_else(|| AdminError::NotFound(format!("no pipeline named `{name}`")))?;
    p.paused = paused;
    registry.put_pipeline(&p).await?;
    Ok(Json(p))
}

pub async fn members(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let pipeline = all_pipelines(&state)?
        .into_iter()
        .find(|p| p.spec.name == name)
        .ok_or_else(|| AdminError::NotFound(format!("no pipeline named `{name}`")))?;
    let group = pipeline.spec.group_id();
    let described = group_members(&state, &group).await?;
    Ok(Json(json!({
        "pipeline": name,
        "group_id": group,
        "group_state": described.group_state,
        "group_protocol": described.group_protocol,
        "members": described.members,
    })))
}

/// The members of `group`: the broker's description merged with what the
/// hosts published.
pub(super) async fn group_members(
    state: &AdminState,
    group: &str,
) -> ApiResult<super::groups::GroupMembers> {
    let published = registry(state)?.members(group);
    let Some(groups) = &state.groups else {
        return Ok(super::groups::published_only(published));
    };
    let broker = groups.describe(group).await;
    if let Err(e) = &broker {
        tracing::debug!(group, error = %e, "cannot describe the group; members are as the hosts last published them");
    }
    Ok(super::groups::merge_members(published, broker))
}

fn refuse_config_pipeline(state: &AdminState, name: &str) -> ApiResult<()> {
    if state.view.config_names().iter().any(|n| n == name) {
        return Err(AdminError::Conflict(format!(
            "pipeline `{name}` is declared in the host's config file; change it there"
        )));
    }
    Ok(())
}

fn check_name(name: &str, what: &str) -> ApiResult<()> {
    if crate::config::is_name(name) {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{what} name `{name}` {}",
            crate::config::NAME_RULE
        )))
    }
}
