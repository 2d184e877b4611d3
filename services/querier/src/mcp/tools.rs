//! The MCP tools: their descriptions and argument schemas, and each call as a request to the
//! querier's HTTP API.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use prost::Message;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};
use spindle_proto::tempo::TraceByIdResponse;
use tower::ServiceExt;

use super::analysis;

/// Most characters of text one tool answer holds; longer answers are cut with a note.
const MAX_TEXT: usize = 48 * 1024;
/// Most bytes read from the HTTP API for a tool answered in text (answers are cut at
/// [`MAX_TEXT`] anyway).
const MAX_API_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of a trace read for `critical-path` and `trace-errors` (which summarise it).
const MAX_API_TRACE_BYTES: usize = 64 * 1024 * 1024;
/// Most characters of one argument.
const MAX_ARGUMENT: usize = 64 * 1024;
/// Window searched when a tool is given no `start`/`end`: the last hour.
const DEFAULT_WINDOW_SECS: u64 = 3600;

struct Spec {
    name: &'static str,
    description: &'static str,
    /// `(argument, description, required)`
    arguments: &'static [(&'static str, &'static str, bool)],
}

const START: (&str, &str, bool) = ("start", "Start of the time range, RFC 3339 (default: an hour ago).", false);
const END: (&str, &str, bool) = ("end", "End of the time range, RFC 3339 (default: now).", false);
const TRACE_ID: (&str, &str, bool) = ("trace_id", "Trace id, hexadecimal.", true);

const SPECS: &[Spec] = &[
    Spec {
        name: "traceql-search",
        description: "Search traces with a TraceQL query (e.g. { resource.service.name = \"api\" && status = error }). \
                      Returns up to 20 matching traces with their root service, root span name, duration and matching spans. \
                      Metrics queries (| rate() ...) belong to traceql-metrics-instant or traceql-metrics-range.",
        arguments: &[("query", "A TraceQL query without a metrics function.", true), START, END],
    },
    Spec {
        name: "traceql-metrics-instant",
        description: "Run a TraceQL metrics query (e.g. { status = error } | rate() by (resource.service.name)) over the \
                      time range and return one value per series.",
        arguments: &[("query", "A TraceQL metrics query.", true), START, END],
    },
    Spec {
        name: "traceql-metrics-range",
        description: "Run a TraceQL metrics query over the time range and return a time series per group \
                      (Prometheus matrix form).",
        arguments: &[("query", "A TraceQL metrics query.", true), START, END],
    },
    Spec {
        name: "get-trace",
        description: "Read one trace by id: every span with its attributes, events, links and status (OTLP JSON, \
                      cut to a size a model can read).",
        arguments: &[TRACE_ID],
    },
    Spec {
        name: "get-attribute-names",
        description: "List the attribute names seen in the last day, per scope.",
        arguments: &[("scope", "One scope: span, resource, event, link or instrumentation (default: all).", false)],
    },
    Spec {
        name: "get-attribute-values",
        description: "List the values of one attribute seen in the last day, optionally narrowed by a TraceQL filter.",
        arguments: &[
            ("name", "The fully scoped attribute, e.g. resource.service.name or span.http.route.", true),
            ("filter-query", "A TraceQL spanset filter of && conditions, e.g. { resource.service.name = \"api\" }.", false),
        ],
    },
    Spec {
        name: "docs-traceql",
        description: "TraceQL documentation: basic (filters, fields, operators), aggregates, structural (relations \
                      between spans) or metrics.",
        arguments: &[("name", "basic, aggregates, structural or metrics (default: basic).", false)],
    },
    Spec {
        name: "sql",
        description: "Run read-only SQL (DataFusion dialect) over the table `spans` (one row per span: trace_id, span_id, \
                      parent_span_id, name, kind, start_time, duration_ns, status_code, status_message, service_name, \
                      span_attrs_str['key'], resource_attrs_str['key'], ...) and `metrics`. Add LIMIT; answers are capped.",
        arguments: &[("query", "One SELECT statement.", true)],
    },
    Spec {
        name: "service-graph",
        description: "Which services call which in the time range: (parent service, child service, number of calls), \
                      from spans whose parent span belongs to another service.",
        arguments: &[START, END],
    },
    Spec {
        name: "critical-path",
        description: "The critical path of a trace: the chain of spans that determined its end-to-end duration, with \
                      the time each contributed, longest first.",
        arguments: &[TRACE_ID],
    },
    Spec {
        name: "trace-errors",
        description: "The spans of a trace whose status is error, with their service, status message and recorded \
                      exceptions.",
        arguments: &[TRACE_ID],
    },
];

/// The tools, as `tools/list` answers.
pub fn list() -> Vec<Tool> {
    SPECS
        .iter()
        .map(|spec| {
            let properties: serde_json::Map<String, Value> = spec
                .arguments
                .iter()
                .map(|(name, description, _)| {
                    (name.to_string(), json!({ "type": "string", "description": description }))
                })
                .collect();
            let required: Vec<&str> = spec.arguments.iter().filter(|a| a.2).map(|a| a.0).collect();
            let schema = json!({ "type": "object", "properties": properties, "required": required });
            let schema: JsonObject = match schema {
                Value::Object(map) => map,
                _ => JsonObject::new(),
            };
            Tool::new(Cow::Borrowed(spec.name), Cow::Borrowed(spec.description), Arc::new(schema))
                .annotate(ToolAnnotations::with_title(spec.name).read_only(true).destructive(false).idempotent(true))
        })
        .collect()
}

/// A tool call that cannot be answered: shown to the model as the tool's error.
struct Refusal(String);

impl<T: Into<String>> From<T> for Refusal {
    fn from(message: T) -> Self {
        Refusal(message.into())
    }
}

/// Runs tool `name` with `arguments` for the tenants in `tenant` (the `X-Scope-OrgID` value).
pub async fn call(api: &Router, tenant: Option<HeaderValue>, name: &str, arguments: &JsonObject) -> CallToolResult {
    match run(api, tenant.as_ref(), name, arguments).await {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(Refusal(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
    }
}

/// A string argument (`None` when absent or empty).
fn argument<'a>(arguments: &'a JsonObject, name: &str) -> Result<Option<&'a str>, Refusal> {
    match arguments.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_ARGUMENT => {
            Err(format!("argument {name} is longer than {MAX_ARGUMENT} bytes").into())
        }
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(format!("argument {name} must be a string").into()),
    }
}

fn required<'a>(arguments: &'a JsonObject, name: &str) -> Result<&'a str, Refusal> {
    argument(arguments, name)?.ok_or_else(|| format!("argument {name} is required").into())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `start`/`end` as the HTTP API takes them: RFC 3339 as given, else the last hour.
fn window(arguments: &JsonObject) -> Result<(String, String), Refusal> {
    let end = match argument(arguments, "end")? {
        Some(t) => t.to_string(),
        None => (now_secs() + 1).to_string(),
    };
    // Without a start: the hour before the end.
    let start = match argument(arguments, "start")? {
        Some(t) => t.to_string(),
        None => {
            let end_secs = match end.parse::<u64>() {
                Ok(secs) => secs,
                Err(_) => (rfc3339_ms("end", &end)? / 1000).max(0) as u64,
            };
            end_secs.saturating_sub(DEFAULT_WINDOW_SECS).to_string()
        }
    };
    Ok((start, end))
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Percent-encodes a path segment.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether `query` is a TraceQL metrics query (`None`: it does not parse; the API will say why).
fn is_metrics(query: &str) -> Option<bool> {
    spindle_traceql::compile(query).ok().map(|q| q.metrics.is_some())
}

async fn run(
    api: &Router,
    tenant: Option<&HeaderValue>,
    name: &str,
    arguments: &JsonObject,
) -> Result<String, Refusal> {
    let get = |uri: String| Call { method: Method::GET, uri, body: None, accept: "application/json" };
    match name {
        "traceql-search" => {
            let query = required(arguments, "query")?;
            if is_metrics(query) == Some(true) {
                return Err("this is a metrics query: use traceql-metrics-instant or traceql-metrics-range".into());
            }
            let (start, end) = window(arguments)?;
            let q = query_string(&[("q", query), ("start", &start), ("end", &end), ("limit", "20")]);
            Ok(cut(get(format!("/api/search?{q}")).text(api, tenant).await?))
        }
        "traceql-metrics-instant" | "traceql-metrics-range" => {
            let query = required(arguments, "query")?;
            if is_metrics(query) == Some(false) {
                return Err("this is a search query, not a metrics query: use traceql-search".into());
            }
            let (start, end) = window(arguments)?;
            let path =
                if name == "traceql-metrics-instant" { "/api/metrics/query" } else { "/api/metrics/query_range" };
            let q = query_string(&[("q", query), ("start", &start), ("end", &end)]);
            Ok(cut(get(format!("{path}?{q}")).text(api, tenant).await?))
        }
        "get-trace" => {
            let id = path_segment(required(arguments, "trace_id")?);
            Ok(cut(get(format!("/api/v2/traces/{id}")).text(api, tenant).await?))
        }
        "get-attribute-names" => {
            let scope = argument(arguments, "scope")?.unwrap_or("all");
            Ok(cut(get(format!("/api/v2/search/tags?{}", query_string(&[("scope", scope)]))).text(api, tenant).await?))
        }
        "get-attribute-values" => {
            let attribute = path_segment(required(arguments, "name")?);
            let q = match argument(arguments, "filter-query")? {
                Some(filter) => format!("?{}", query_string(&[("q", filter)])),
                None => String::new(),
            };
            Ok(cut(get(format!("/api/v2/search/tag/{attribute}/values{q}")).text(api, tenant).await?))
        }
        "docs-traceql" => Ok(match argument(arguments, "name")?.unwrap_or("basic") {
            "basic" => include_str!("docs/basic.md"),
            "aggregates" => include_str!("docs/aggregates.md"),
            "structural" => include_str!("docs/structural.md"),
            "metrics" => include_str!("docs/metrics.md"),
            other => {
                return Err(format!("no TraceQL docs named {other:?}: basic, aggregates, structural or metrics").into())
            }
        }
        .to_string()),
        "sql" => {
            let body = serde_json::to_vec(&json!({ "query": required(arguments, "query")? })).unwrap_or_default();
            let call =
                Call { method: Method::POST, uri: "/api/v1/sql".into(), body: Some(body), accept: "application/json" };
            Ok(cut(call.text(api, tenant).await?))
        }
        "service-graph" => {
            let end_ms = match argument(arguments, "end")? {
                Some(t) => rfc3339_ms("end", t)?,
                // A minute ahead: spans that just arrived count (clocks differ a little).
                None => (now_secs() as i64 + 60) * 1000,
            };
            let start_ms = match argument(arguments, "start")? {
                Some(t) => rfc3339_ms("start", t)?,
                None => end_ms - DEFAULT_WINDOW_SECS as i64 * 1000,
            };
            if start_ms >= end_ms {
                return Err("start must be before end".into());
            }
            let q = query_string(&[("endTs", &end_ms.to_string()), ("lookback", &(end_ms - start_ms).to_string())]);
            Ok(cut(get(format!("/jaeger/api/dependencies?{q}")).text(api, tenant).await?))
        }
        "critical-path" | "trace-errors" => {
            let id = path_segment(required(arguments, "trace_id")?);
            let call = Call {
                method: Method::GET,
                uri: format!("/api/v2/traces/{id}"),
                body: None,
                accept: "application/protobuf",
            };
            let bytes = call.bytes(api, tenant).await?;
            let response = TraceByIdResponse::decode(bytes.as_ref()).map_err(|e| format!("reading the trace: {e}"))?;
            let spans = response.trace.map(|t| t.resource_spans).unwrap_or_default();
            if spans.is_empty() {
                return Err("no trace with this id".into());
            }
            let summary =
                if name == "critical-path" { analysis::critical_path(&spans) } else { analysis::errors(&spans) };
            Ok(cut(summary.to_string()))
        }
        other => Err(format!("no tool named {other:?}").into()),
    }
}

fn rfc3339_ms(name: &str, text: &str) -> Result<i64, Refusal> {
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text.trim())
        .map(|ns| ns / 1_000_000)
        .map_err(|_| format!("argument {name} {text:?} is not an RFC 3339 time").into())
}

/// One request to the HTTP API.
struct Call {
    method: Method,
    uri: String,
    body: Option<Vec<u8>>,
    accept: &'static str,
}

impl Call {
    /// The answer's body when the request succeeded; its message as the tool's error otherwise.
    async fn bytes(self, api: &Router, tenant: Option<&HeaderValue>) -> Result<axum::body::Bytes, Refusal> {
        let limit = if self.accept == "application/protobuf" { MAX_API_TRACE_BYTES } else { MAX_API_TEXT_BYTES };
        let mut request = Request::builder().method(self.method).uri(&self.uri).header(header::ACCEPT, self.accept);
        if let Some(tenant) = tenant {
            request = request.header(spindle_auth::http::TENANT_HEADER, tenant.clone());
        }
        if self.body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Body::from(self.body.unwrap_or_default()))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = match api.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = to_bytes(response.into_body(), limit)
            .await
            .map_err(|_| format!("the answer is larger than {limit} bytes; narrow the query"))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = String::from_utf8_lossy(&body).trim().to_string();
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                format!("Spindle is busy ({status}): {message}; retry shortly").into()
            }
            _ => format!("{status}: {message}").into(),
        })
    }

    async fn text(self, api: &Router, tenant: Option<&HeaderValue>) -> Result<String, Refusal> {
        Ok(String::from_utf8_lossy(&self.bytes(api, tenant).await?).into_owned())
    }
}

/// At most [`MAX_TEXT`] characters of `text`, with a note when cut.
fn cut(text: String) -> String {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[cut: the answer has {} more bytes of {}; narrow the query (time range, filters, limit)]",
        &text[..end],
        text.len() - end,
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_schema_and_is_read_only() {
        let tools = list();
        assert_eq!(tools.len(), 11);
        for t in &tools {
            assert_eq!(t.input_schema.get("type"), Some(&json!("object")), "{}", t.name);
            assert_eq!(t.annotations.as_ref().and_then(|a| a.read_only_hint), Some(true));
        }
        let search = tools.iter().find(|t| t.name == "traceql-search").unwrap();
        assert_eq!(search.input_schema.get("required"), Some(&json!(["query"])));
    }

    #[test]
    fn long_answers_are_cut_with_a_note() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(MAX_TEXT);
        let out = cut(long.clone());
        assert!(out.len() < long.len() && out.contains("[cut: the answer has"));
        assert_eq!(path_segment("span.http route/x"), "span.http%20route%2Fx");
    }
}
