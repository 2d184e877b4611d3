//! Tag names and values: `/api/search/tags`, `/api/v2/search/tags`,
//! `/api/search/tag/{tag}/values`, `/api/v2/search/tag/{tag}/values`.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use spindle_query::tags::{TagNames, TagRef, TagValue, INTRINSIC_TAGS};
use spindle_schema::AttrScope;
use spindle_traceql::Intrinsic;

use crate::params::{tenants, time_range};
use crate::{ApiError, Querier};

/// Window searched when the request gives no `start`/`end`.
const DEFAULT_WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;
const DEFAULT_LIMIT: usize = 5000;

#[derive(Debug, Deserialize)]
pub struct TagParams {
    scope: Option<String>,
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
}

impl TagParams {
    fn range(&self) -> Result<(i64, i64), ApiError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        Ok(time_range(self.start.as_deref(), self.end.as_deref())?
            .unwrap_or((now - DEFAULT_WINDOW_NS, now + 60_000_000_000)))
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref().map(str::trim) {
            None | Some("") | Some("0") => Ok(DEFAULT_LIMIT),
            Some(t) => t.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {t:?}"))),
        }
    }

    fn check_query(&self) -> Result<(), ApiError> {
        // The filter is validated; narrowing tag lists by it is not done yet (all tags are listed).
        match self.q.as_deref().map(str::trim) {
            None | Some("") => Ok(()),
            Some(q) => spindle_traceql::parse(q).map(|_| ()).map_err(|e| ApiError::bad_request(e.to_string())),
        }
    }
}

fn json_response(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn all_names(q: &Querier, headers: &HeaderMap, p: &TagParams) -> Result<TagNames, ApiError> {
    p.check_query()?;
    let (range, limit) = (p.range()?, p.limit()?);
    let mut names = TagNames::default();
    for tenant in tenants(headers)? {
        let n = q.engine.tag_names(&tenant, range, limit).await?;
        names.resource.extend(n.resource);
        names.span.extend(n.span);
    }
    Ok(names)
}

/// `GET /api/search/tags`: span and resource attribute names together.
pub async fn names_v1(State(q): State<Querier>, Query(p): Query<TagParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let result = all_names(&q, &headers, &p).await;
    q.metrics.observe("tags", result.is_ok(), start);
    match result {
        Ok(n) => {
            let all: BTreeSet<String> = n.resource.into_iter().chain(n.span).collect();
            json_response(json!({ "tagNames": all, "metrics": {} }))
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v2/search/tags`: names per scope.
pub async fn names_v2(State(q): State<Querier>, Query(p): Query<TagParams>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let scope = p.scope.clone().unwrap_or_default();
    if !matches!(scope.as_str(), "" | "all" | "resource" | "span" | "intrinsic" | "event" | "link" | "instrumentation")
    {
        return ApiError::bad_request(format!("invalid scope {scope:?}")).into_response();
    }
    let result = all_names(&q, &headers, &p).await;
    q.metrics.observe("tags", result.is_ok(), start);
    let n = match result {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let mut scopes = Vec::new();
    let want = |s: &str| scope.is_empty() || scope == "all" || scope == s;
    if want("resource") {
        scopes.push(json!({ "name": "resource", "tags": n.resource }));
    }
    if want("span") {
        scopes.push(json!({ "name": "span", "tags": n.span }));
    }
    if want("intrinsic") {
        scopes.push(json!({ "name": "intrinsic", "tags": INTRINSIC_TAGS }));
    }
    for other in ["event", "link", "instrumentation"] {
        if scope == other {
            scopes.push(json!({ "name": other, "tags": Vec::<String>::new() }));
        }
    }
    json_response(json!({ "scopes": scopes, "metrics": {} }))
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

async fn values(q: &Querier, headers: &HeaderMap, p: &TagParams, tag: &TagRef) -> Result<Vec<TagValue>, ApiError> {
    p.check_query()?;
    let (range, limit) = (p.range()?, p.limit()?);
    let mut all = BTreeSet::new();
    for tenant in tenants(headers)? {
        all.extend(q.engine.tag_values(&tenant, tag, range, limit).await?);
    }
    Ok(all.into_iter().take(limit).collect())
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
    let tag_ref = match tag.as_str() {
        "name" => TagRef::Intrinsic(Intrinsic::Name),
        "status" | "status.code" => TagRef::Intrinsic(Intrinsic::Status),
        _ => TagRef::Attr(None, tag.clone()),
    };
    let result = values(&q, &headers, &p, &tag_ref).await;
    q.metrics.observe("tag_values", result.is_ok(), start);
    match result {
        Ok(v) => {
            let strings: BTreeSet<String> = v.into_iter().map(|v| v.value).collect();
            json_response(json!({ "tagValues": strings, "metrics": {} }))
        }
        Err(e) => e.into_response(),
    }
}

/// Parses a scoped tag (`resource.x`, `span.x`, `.x`) or an intrinsic.
fn scoped_tag(tag: &str) -> Result<TagRef, ApiError> {
    if let Some(k) = tag.strip_prefix("resource.") {
        return Ok(TagRef::Attr(Some(AttrScope::Resource), k.to_string()));
    }
    if let Some(k) = tag.strip_prefix("span.") {
        return Ok(TagRef::Attr(Some(AttrScope::Span), k.to_string()));
    }
    if let Some(k) = tag.strip_prefix('.') {
        return Ok(TagRef::Attr(None, k.to_string()));
    }
    Intrinsic::from_name(tag).map(TagRef::Intrinsic).ok_or_else(|| {
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
        Ok(v) => {
            let values: Vec<Value> = v.into_iter().map(|v| json!({ "type": v.ty, "value": v.value })).collect();
            json_response(json!({ "tagValues": values, "metrics": {} }))
        }
        Err(e) => e.into_response(),
    }
}
