//! Jaeger's query APIs, so the Jaeger UI and Grafana's Jaeger datasource read Spindle:
//!
//! - [`v1`]: the JSON API the Jaeger UI and Grafana call (`/api/services`, `/api/traces`, ...),
//!   served under `/jaeger` (`/jaeger/api/...`) because Tempo's `/api/traces/{id}` holds the
//!   same path: point Grafana's Jaeger datasource at `http://<host>:3200/jaeger`.
//! - [`v3`]: `api/v3` over HTTP (OTLP/JSON traces), at `/api/v3/...` and `/jaeger/api/v3/...`.
//!
//! Both are tenant-scoped like every query (`X-Scope-OrgID`, API keys) and answer from the same
//! engine: a search is a TraceQL filter on one span (service, operation, tags, duration), its
//! traces then read whole by id.

mod model;
mod v1;
mod v3;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::AsArray;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use spindle_query::filter::tags_condition;
use spindle_query::tags::TagQuery;
use spindle_query::traceql::search::{SearchRequest, TraceHit};
use spindle_storage::TenantId;
use spindle_traceql::{
    Attribute, AttributeScope, BinaryOp, Field, FieldExpr, Intrinsic, Kind, SpansetExpr, Static, Status,
};

use crate::traces::load;
use crate::{ApiError, Querier};

/// Window that services and operations are listed from.
const CATALOG_WINDOW_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
/// Most services or operations listed.
const MAX_CATALOG: usize = 10_000;
/// Most traces one search returns.
const MAX_TRACES: usize = 1_000;
/// Most spans one search answer holds, over all its traces (the traces past it are left out).
const MAX_SEARCH_SPANS: usize = 200_000;
/// Traces read at once for a search answer.
const CONCURRENT_READS: usize = 8;

/// Jaeger routes: the v1 JSON API under `/jaeger`, api/v3 at the root and under `/jaeger`.
pub fn routes() -> Router<Querier> {
    let v3 = Router::new()
        .route("/api/v3/services", get(v3::services))
        .route("/api/v3/operations", get(v3::operations))
        .route("/api/v3/traces", get(v3::find_traces))
        .route("/api/v3/traces/{id}", get(v3::get_trace))
        .route("/api/v3/trace-summaries", get(v3::trace_summaries));
    let v1 = Router::new()
        .route("/api/services", get(v1::services))
        .route("/api/services/{service}/operations", get(v1::service_operations))
        .route("/api/operations", get(v1::operations))
        .route("/api/traces", get(v1::find_traces))
        .route("/api/traces/{id}", get(v1::get_trace))
        .route("/api/dependencies", get(v1::dependencies))
        .merge(v3.clone());
    Router::new().nest("/jaeger", v1).merge(v3)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// An operation of a service and the kind of its spans, as both APIs list them.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    span_kind: String,
}

/// What a Jaeger search asks for: spans of `service` named `operation`, with every tag, and a
/// duration within the bounds, starting within `range`.
#[derive(Debug, Default)]
struct Search {
    service: Option<String>,
    operation: Option<String>,
    tags: Vec<(String, String)>,
    min_duration_ns: Option<i64>,
    max_duration_ns: Option<i64>,
    range: (i64, i64),
    limit: usize,
}

fn compare(field: Field, op: BinaryOp, value: Static) -> FieldExpr {
    FieldExpr::Binary { op, lhs: Box::new(FieldExpr::Field(field)), rhs: Box::new(FieldExpr::Static(value)) }
}

fn and(a: FieldExpr, b: FieldExpr) -> FieldExpr {
    FieldExpr::Binary { op: BinaryOp::And, lhs: Box::new(a), rhs: Box::new(b) }
}

fn service_field() -> Field {
    Field::Attribute(Attribute { scope: AttributeScope::Resource, parent: false, name: "service.name".into() })
}

/// The status or kind a Jaeger tag stands for (Jaeger shows them as tags; Spindle stores them
/// as span fields).
fn intrinsic_tag(key: &str, value: &str) -> Option<FieldExpr> {
    let status = |s| Some(compare(Field::Intrinsic(Intrinsic::Status), BinaryOp::Eq, Static::Status(s)));
    match (key, value.to_ascii_lowercase().as_str()) {
        // Jaeger's error tag: the status, or an `error` attribute some instrumentations set.
        ("error", "true") => Some(FieldExpr::Binary {
            op: BinaryOp::Or,
            lhs: Box::new(compare(Field::Intrinsic(Intrinsic::Status), BinaryOp::Eq, Static::Status(Status::Error))),
            rhs: Box::new(tags_condition(&[("error".into(), "true".into())])),
        }),
        ("error", "false") => {
            Some(compare(Field::Intrinsic(Intrinsic::Status), BinaryOp::Ne, Static::Status(Status::Error)))
        }
        ("otel.status_code", "error") => status(Status::Error),
        ("otel.status_code", "ok") => status(Status::Ok),
        ("span.kind", k) => {
            let kind = match k {
                "server" => Kind::Server,
                "client" => Kind::Client,
                "producer" => Kind::Producer,
                "consumer" => Kind::Consumer,
                "internal" => Kind::Internal,
                _ => return None,
            };
            Some(compare(Field::Intrinsic(Intrinsic::Kind), BinaryOp::Eq, Static::Kind(kind)))
        }
        _ => None,
    }
}

impl Search {
    /// The search as a TraceQL spanset filter: one span must match every condition.
    fn filter(&self) -> SpansetExpr {
        let mut plain = Vec::new();
        let mut conds = Vec::new();
        for (k, v) in &self.tags {
            match intrinsic_tag(k, v) {
                Some(c) => conds.push(c),
                None => plain.push((k.clone(), v.clone())),
            }
        }
        if let Some(s) = &self.service {
            conds.push(compare(service_field(), BinaryOp::Eq, Static::Str(s.clone())));
        }
        if let Some(o) = &self.operation {
            conds.push(compare(Field::Intrinsic(Intrinsic::Name), BinaryOp::Eq, Static::Str(o.clone())));
        }
        if let Some(d) = self.min_duration_ns {
            conds.push(compare(Field::Intrinsic(Intrinsic::Duration), BinaryOp::Ge, Static::Duration(d)));
        }
        if let Some(d) = self.max_duration_ns {
            conds.push(compare(Field::Intrinsic(Intrinsic::Duration), BinaryOp::Le, Static::Duration(d)));
        }
        SpansetExpr::Filter(conds.into_iter().fold(tags_condition(&plain), and))
    }

    /// The matching traces of every tenant, newest first, at most `limit`.
    async fn hits(&self, q: &Querier, tenants: &[TenantId]) -> Result<Vec<(TenantId, TraceHit)>, ApiError> {
        let request = SearchRequest {
            spans: self.filter(),
            time_range: Some(self.range),
            limit: self.limit.clamp(1, MAX_TRACES),
            spans_per_spanset: 1,
        };
        let mut hits = Vec::new();
        for tenant in tenants {
            let found = q.engine.bounded(q.engine.search(tenant, &request)).await?;
            hits.extend(found.traces.into_iter().map(|t| (tenant.clone(), t)));
        }
        hits.sort_by_key(|(_, t)| std::cmp::Reverse(t.newest_selected_ns));
        hits.truncate(request.limit);
        Ok(hits)
    }

    /// The matching traces, each read whole, in the order of [`Search::hits`]; once
    /// [`MAX_SEARCH_SPANS`] spans are reached the rest are left out, not read (the second value
    /// says how many).
    async fn traces(&self, q: &Querier, tenants: &[TenantId]) -> Result<(Vec<Vec<ResourceSpans>>, usize), ApiError> {
        let hits = self.hits(q, tenants).await?;
        let total = hits.len();
        let reads = futures::stream::iter(hits.into_iter().map(|(tenant, hit)| async move {
            load(q, std::slice::from_ref(&tenant), hit.trace_id, None).await.map(|l| l.resource_spans)
        }))
        .buffered(CONCURRENT_READS);
        futures::pin_mut!(reads);
        let (mut traces, mut spans, mut read) = (Vec::new(), 0, 0);
        while let Some(trace) = reads.next().await {
            let trace = trace?;
            read += 1;
            let n: usize = trace.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
            if spans + n > MAX_SEARCH_SPANS {
                // Dropping the stream stops the reads still running or not started.
                return Ok((traces, total - read + 1));
            }
            if n > 0 {
                spans += n;
                traces.push(trace);
            }
        }
        Ok((traces, 0))
    }
}

/// Services with spans in the last week, over every tenant.
async fn services(q: &Querier, tenants: &[TenantId]) -> Result<Vec<String>, ApiError> {
    let now = now_ns();
    let query = TagQuery { range: (now - CATALOG_WINDOW_NS, now + 60_000_000_000), limit: MAX_CATALOG, filter: None };
    let mut out = std::collections::BTreeSet::new();
    for tenant in tenants {
        let values = q.engine.bounded(q.engine.tag_values(tenant, &service_field(), &query)).await?;
        out.extend(values.into_iter().map(|v| v.value));
    }
    Ok(out.into_iter().take(MAX_CATALOG).collect())
}

/// Operation names of `service` in the last week with their span kinds (`""`: unspecified),
/// optionally only of one kind.
async fn operations(
    q: &Querier,
    tenants: &[TenantId],
    service: &str,
    kind: Option<Kind>,
) -> Result<Vec<(String, String)>, ApiError> {
    let now = now_ns();
    let kinds: Vec<Kind> = match kind {
        Some(k) => vec![k],
        None => vec![Kind::Unspecified, Kind::Internal, Kind::Server, Kind::Client, Kind::Producer, Kind::Consumer],
    };
    let mut out: BTreeMap<(String, String), ()> = BTreeMap::new();
    for tenant in tenants {
        for k in &kinds {
            let filter = and(
                compare(service_field(), BinaryOp::Eq, Static::Str(service.to_string())),
                compare(Field::Intrinsic(Intrinsic::Kind), BinaryOp::Eq, Static::Kind(*k)),
            );
            let query = TagQuery {
                range: (now - CATALOG_WINDOW_NS, now + 60_000_000_000),
                limit: MAX_CATALOG,
                filter: Some(filter),
            };
            let names =
                q.engine.bounded(q.engine.tag_values(tenant, &Field::Intrinsic(Intrinsic::Name), &query)).await?;
            let kind = kind_text(*k);
            out.extend(names.into_iter().map(|n| ((n.value, kind.to_string()), ())));
        }
    }
    Ok(out.into_keys().take(MAX_CATALOG).collect())
}

/// How long before the window a parent span may start and still count as the caller.
const PARENT_SLACK_NS: i64 = 3600 * 1_000_000_000;

/// Calls between services in `[start_ns, end_ns]`: spans of one service whose parent span is
/// of another, counted per (parent service, child service).
async fn dependencies(
    q: &Querier,
    tenant: &TenantId,
    start_ns: i64,
    end_ns: i64,
) -> Result<Vec<(String, String, u64)>, ApiError> {
    let parent_start = start_ns.saturating_sub(PARENT_SLACK_NS);
    // Only numbers go into the text (no caller input), so it cannot be injected into.
    let sql = format!(
        "SELECT p.service_name AS parent, c.service_name AS child, count(*) AS calls \
         FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
         WHERE c.start_time >= to_timestamp_nanos({start_ns}) AND c.start_time <= to_timestamp_nanos({end_ns}) \
         AND p.start_time >= to_timestamp_nanos({parent_start}) AND p.start_time <= to_timestamp_nanos({end_ns}) \
         AND p.service_name <> c.service_name \
         GROUP BY p.service_name, c.service_name"
    );
    let (_, batches) = q.engine.sql(tenant, &sql, MAX_CATALOG, 64 * 1024 * 1024).await?;
    let mut out = Vec::new();
    for b in batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8);
        let (parents, children) = (text(0).map_err(internal)?, text(1).map_err(internal)?);
        let calls = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::UInt64).map_err(internal)?;
        let (parents, children) = (parents.as_string::<i32>(), children.as_string::<i32>());
        let calls = calls.as_primitive::<arrow::datatypes::UInt64Type>();
        for row in 0..b.num_rows() {
            out.push((parents.value(row).to_string(), children.value(row).to_string(), calls.value(row)));
        }
    }
    Ok(out)
}

fn internal(e: arrow::error::ArrowError) -> ApiError {
    ApiError::from(spindle_query::QueryError::from(e))
}

/// A span kind as Jaeger spells it (`""` for unspecified).
fn kind_text(k: Kind) -> &'static str {
    match k {
        Kind::Unspecified => "",
        Kind::Internal => "internal",
        Kind::Server => "server",
        Kind::Client => "client",
        Kind::Producer => "producer",
        Kind::Consumer => "consumer",
    }
}

/// A `spanKind` parameter (empty: all kinds).
fn parse_kind(text: Option<&str>) -> Result<Option<Kind>, ApiError> {
    Ok(match text.map(str::trim).unwrap_or("") {
        "" => None,
        "server" => Some(Kind::Server),
        "client" => Some(Kind::Client),
        "producer" => Some(Kind::Producer),
        "consumer" => Some(Kind::Consumer),
        "internal" => Some(Kind::Internal),
        "unspecified" => Some(Kind::Unspecified),
        other => {
            return Err(ApiError::bad_request(format!(
                "unsupported span kind {other:?}: expected server, client, producer, consumer, internal or unspecified"
            )))
        }
    })
}

/// Most tags one Jaeger search may hold.
const MAX_TAGS: usize = crate::params::MAX_TAGS;

/// Adds `tags` (a JSON map of strings, as Jaeger and Grafana send it) to `out`.
fn json_tags(text: &str, out: &mut Vec<(String, String)>) -> Result<(), ApiError> {
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("malformed 'tags' parameter, cannot unmarshal JSON: {e}")))?;
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        out.push((k, v));
    }
    if out.len() > MAX_TAGS {
        return Err(ApiError::bad_request(format!("at most {MAX_TAGS} tags may be searched for at once")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_one_span_filter() {
        let s = Search {
            service: Some("api".into()),
            operation: Some("GET /".into()),
            tags: vec![("error".into(), "true".into()), ("http.status_code".into(), "500".into())],
            min_duration_ns: Some(1_000_000),
            ..Default::default()
        };
        let text = format!("{:?}", s.filter());
        for want in ["service.name", "GET /", "Status(Error)", "http.status_code", "Duration(1000000)"] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let mut tags = Vec::new();
        json_tags(r#"{"a":"b","n":5}"#, &mut tags).unwrap();
        assert_eq!(tags, vec![("a".into(), "b".into()), ("n".into(), "5".into())]);
        assert!(json_tags("[1]", &mut tags).is_err());
        assert!(parse_kind(Some("sideways")).is_err());
        assert_eq!(parse_kind(Some("")).unwrap(), None);
    }
}
