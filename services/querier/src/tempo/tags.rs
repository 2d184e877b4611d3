//! Tag names and values: `/api/search/tags`, `/api/v2/search/tags`,
//! `/api/search/tag/{tag}/values`, `/api/v2/search/tag/{tag}/values`. `q` (the query being
//! typed in Grafana) narrows both to the spans its conditions select.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use spindle_query::tags::{TagNames, TagQuery, TagValue, INTRINSIC_TAGS, SCOPES};
use spindle_traceql::{Attribute, AttributeScope, Field, Intrinsic};

use crate::params::{json_response, tenants, time_range};
use crate::{ApiError, Querier};

/// Window searched when the request gives no `start`/`end`.
const DEFAULT_WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;
const DEFAULT_LIMIT: usize = 5000;
const MAX_LIMIT: usize = 100_000;

/// Query parameters of the tag endpoints.
#[derive(Debug, Deserialize)]
pub struct TagParams {
    scope: Option<String>,
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
}

impl TagParams {
    fn query(&self) -> Result<TagQuery, ApiError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        let range = time_range(self.start.as_deref(), self.end.as_deref())?
            .unwrap_or((now - DEFAULT_WINDOW_NS, now + 60_000_000_000));
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") | Some("0") => DEFAULT_LIMIT,
            Some(t) => t.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {t:?}")))?,
        }
        .min(MAX_LIMIT);
        // An unfinished query narrows by what it already says (Grafana sends it while typing).
        let filter = self.q.as_deref().and_then(spindle_traceql::autocomplete_filter);
        Ok(TagQuery { range, limit, filter })
    }
}

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct TagMetrics {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NamesV1 {
    tag_names: BTreeSet<String>,
    metrics: TagMetrics,
}

#[derive(Debug, Serialize)]
struct ScopeJson {
    name: String,
    tags: Vec<String>,
}

#[derive(Debug, Serialize)]
struct NamesV2 {
    scopes: Vec<ScopeJson>,
    metrics: TagMetrics,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValuesV1 {
    tag_values: BTreeSet<String>,
    metrics: TagMetrics,
}

#[derive(Debug, Serialize)]
struct ValueJson {
    #[serde(rename = "type")]
    ty: String,
    value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValuesV2 {
    tag_values: Vec<ValueJson>,
    metrics: TagMetrics,
}

async fn all_names(q: &Querier, headers: &HeaderMap, p: &TagParams) -> Result<TagNames, ApiError> {
    let query = p.query()?;
    let mut names = TagNames::default();
    for tenant in tenants(headers)? {
        names.extend(q.engine.bounded(q.engine.tag_names(&tenant, &query)).await?);
    }
    Ok(names)
}

/// `GET /api/search/tags`: span and resource attribute names together (intrinsics with
/// `scope=intrinsic`).
pub async fn names_v1(State(q): State<Querier>, Query(p): Query<TagParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = async {
        if p.scope.as_deref() == Some("intrinsic") {
            return Ok(INTRINSIC_TAGS.iter().map(|s| s.to_string()).collect());
        }
        let n = all_names(&q, &headers, &p).await?;
        Ok::<_, ApiError>(n.scopes[0].iter().chain(&n.scopes[1]).cloned().collect::<BTreeSet<String>>())
    }
    .await;
    q.metrics.observe("tags", result.is_ok(), start);
    match result {
        Ok(tag_names) => json_response(&NamesV1 { tag_names, metrics: TagMetrics::default() }),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v2/search/tags`: names per scope.
pub async fn names_v2(State(q): State<Querier>, Query(p): Query<TagParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let scope = p.scope.clone().unwrap_or_default();
    if !matches!(scope.as_str(), "" | "none" | "all" | "intrinsic") && !SCOPES.contains(&scope.as_str()) {
        return ApiError::bad_request(format!("invalid scope {scope:?}")).into_response();
    }
    let all = matches!(scope.as_str(), "" | "none" | "all");
    let result = async {
        let mut scopes = Vec::new();
        if all || scope == "intrinsic" {
            scopes.push(ScopeJson {
                name: "intrinsic".into(),
                tags: INTRINSIC_TAGS.iter().map(|s| s.to_string()).collect(),
            });
        }
        if scope != "intrinsic" {
            let n = all_names(&q, &headers, &p).await?;
            for (name, tags) in SCOPES.iter().zip(n.scopes) {
                if (all && !tags.is_empty()) || scope == *name {
                    scopes.push(ScopeJson { name: name.to_string(), tags: tags.into_iter().collect() });
                }
            }
        }
        Ok::<_, ApiError>(scopes)
    }
    .await;
    q.metrics.observe("tags", result.is_ok(), start);
    match result {
        Ok(scopes) => json_response(&NamesV2 { scopes, metrics: TagMetrics::default() }),
        Err(e) => e.into_response(),
    }
}

/// Grafana URL-encodes tag names twice; the router decodes once.
fn decode_tag(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_string();
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_string())
}

async fn values(q: &Querier, headers: &HeaderMap, p: &TagParams, tag: &Field) -> Result<Vec<TagValue>, ApiError> {
    let query = p.query()?;
    let mut all = BTreeSet::new();
    for tenant in tenants(headers)? {
        all.extend(q.engine.bounded(q.engine.tag_values(&tenant, tag, &query)).await?);
    }
    Ok(all.into_iter().take(query.limit).collect())
}

fn attribute(scope: AttributeScope, name: &str) -> Field {
    Field::Attribute(Attribute { scope, parent: false, name: name.to_string() })
}

/// `GET /api/search/tag/{tag}/values`: values of an unscoped attribute (or `name`/`status`), as strings.
pub async fn values_v1(
    State(q): State<Querier>,
    Path(tag): Path<String>,
    Query(p): Query<TagParams>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let tag = decode_tag(&tag);
    let field = match tag.as_str() {
        "name" => Field::Intrinsic(Intrinsic::Name),
        "status" | "status.code" => Field::Intrinsic(Intrinsic::Status),
        _ => attribute(AttributeScope::Unscoped, &tag),
    };
    let result = values(&q, &headers, &p, &field).await;
    q.metrics.observe("tag_values", result.is_ok(), start);
    match result {
        Ok(v) => json_response(&ValuesV1 {
            tag_values: v.into_iter().map(|v| v.value).collect(),
            metrics: TagMetrics::default(),
        }),
        Err(e) => e.into_response(),
    }
}

/// Parses a scoped tag (`resource.x`, `span.x`, `.x`, `event.x`, ...) or an intrinsic.
fn scoped_tag(tag: &str) -> Result<Field, ApiError> {
    for (prefix, scope) in [
        ("resource.", AttributeScope::Resource),
        ("span.", AttributeScope::Span),
        ("event.", AttributeScope::Event),
        ("link.", AttributeScope::Link),
        ("instrumentation.", AttributeScope::Instrumentation),
        (".", AttributeScope::Unscoped),
    ] {
        if let Some(k) = tag.strip_prefix(prefix).filter(|k| !k.is_empty()) {
            return Ok(attribute(scope, k));
        }
    }
    Intrinsic::from_name(tag).map(Field::Intrinsic).ok_or_else(|| {
        ApiError::bad_request(format!(
            "tag {tag:?} must be scoped (resource.{tag}, span.{tag} or .{tag}) or an intrinsic"
        ))
    })
}

/// `GET /api/v2/search/tag/{scopedTag}/values`: typed values.
pub async fn values_v2(
    State(q): State<Querier>,
    Path(tag): Path<String>,
    Query(p): Query<TagParams>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let tag = decode_tag(&tag);
    let result = async { values(&q, &headers, &p, &scoped_tag(&tag)?).await }.await;
    q.metrics.observe("tag_values", result.is_ok(), start);
    match result {
        Ok(v) => json_response(&ValuesV2 {
            tag_values: v.into_iter().map(|v| ValueJson { ty: v.ty, value: v.value }).collect(),
            metrics: TagMetrics::default(),
        }),
        Err(e) => e.into_response(),
    }
}
