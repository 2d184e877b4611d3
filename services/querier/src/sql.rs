//! `POST /api/v1/sql`: DataFusion SQL over the caller's `spans` table.
//!
//! The body is `{"query": "SELECT ..."}` or the SQL itself as `text/plain`. `?format=` picks
//! the answer: `json` (default: `{"columns":[{"name","type"}],"rows":[[...]]}`), `jsonl`
//! (one object per row), `csv`, or `arrow` (Arrow IPC stream).

use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

use crate::params::tenants;
use crate::{ApiError, Querier};

/// Largest SQL text accepted.
const MAX_SQL_BYTES: usize = 1024 * 1024;

/// SQL routes.
pub fn routes() -> Router<Querier> {
    Router::new().route("/api/v1/sql", post(sql))
}

#[derive(Debug, Deserialize)]
struct SqlParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SqlBody {
    query: String,
}

fn sql_text(headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    if body.len() > MAX_SQL_BYTES {
        return Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("SQL text exceeds the limit of {MAX_SQL_BYTES} bytes"),
        });
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let looks_json = content_type.contains("json") || text.trim_start().starts_with('{');
    let sql = if looks_json {
        serde_json::from_str::<SqlBody>(text)
            .map_err(|e| ApiError::bad_request(format!("invalid body: expected {{\"query\": \"SELECT ...\"}}: {e}")))?
            .query
    } else {
        text.to_string()
    };
    if sql.trim().is_empty() {
        return Err(ApiError::bad_request("empty SQL query"));
    }
    Ok(sql)
}

async fn sql(State(q): State<Querier>, Query(p): Query<SqlParams>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let result = async {
        let format = p.format.as_deref().unwrap_or("json").to_ascii_lowercase();
        if !matches!(format.as_str(), "json" | "jsonl" | "csv" | "arrow") {
            return Err(ApiError::bad_request(format!("invalid format {format:?}: use json, jsonl, csv or arrow")));
        }
        let sql = sql_text(&headers, &body)?;
        let tenants = tenants(&headers)?;
        let [tenant] = tenants.as_slice() else {
            return Err(ApiError::bad_request("SQL runs against one tenant: name a single X-Scope-OrgID"));
        };
        let (schema, batches) = match q.engine.sql(tenant, &sql, q.sql.max_rows, q.sql.max_bytes).await {
            Err(e @ spindle_query::QueryError::ResultTooLarge(_)) => {
                q.metrics.refused(tenant.as_str(), "sql_result_too_large");
                return Err(e.into());
            }
            other => other?,
        };
        encode(&format, schema, &batches)
    }
    .await;
    q.metrics.observe("sql", result.is_ok(), start);
    result.unwrap_or_else(|e| {
        let status = e.status;
        (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": e.message }).to_string())
            .into_response()
    })
}

fn encode_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("cannot encode the result: {e}"))
}

fn encode(format: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<Response, ApiError> {
    match format {
        "csv" => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone())).map_err(encode_error)?;
                }
                for b in batches {
                    w.write(b).map_err(encode_error)?;
                }
            }
            Ok(([(header::CONTENT_TYPE, "text/csv")], out).into_response())
        }
        "arrow" => {
            let mut out = Vec::new();
            {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(encode_error)?;
                for b in batches {
                    w.write(b).map_err(encode_error)?;
                }
                w.finish().map_err(encode_error)?;
            }
            Ok(([(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], out).into_response())
        }
        "jsonl" => {
            let mut out = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b).map_err(encode_error)?;
                }
                w.finish().map_err(encode_error)?;
            }
            Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
        }
        _ => {
            let columns: Vec<Value> = schema
                .fields()
                .iter()
                .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
                .collect();
            let rows = json_rows(&schema, batches)?;
            Ok(([(header::CONTENT_TYPE, "application/json")], json!({ "columns": columns, "rows": rows }).to_string())
                .into_response())
        }
    }
}

/// Rows as JSON arrays, in column order (column names may repeat, so no objects).
fn json_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut rows = Vec::new();
    for b in batches {
        let mut columns: Vec<Vec<Value>> = Vec::with_capacity(b.num_columns());
        for (i, field) in schema.fields().iter().enumerate() {
            let one = Arc::new(Schema::new(vec![Field::new("v", field.data_type().clone(), true)]));
            let batch = RecordBatch::try_new(one, vec![b.column(i).clone()]).map_err(encode_error)?;
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut buf);
                w.write(&batch).map_err(encode_error)?;
                w.finish().map_err(encode_error)?;
            }
            let objects: Vec<Value> =
                if buf.is_empty() { Vec::new() } else { serde_json::from_slice(&buf).map_err(encode_error)? };
            columns.push(
                objects.into_iter().map(|mut o| o.get_mut("v").map(Value::take).unwrap_or(Value::Null)).collect(),
            );
        }
        for r in 0..b.num_rows() {
            rows.push(Value::Array(columns.iter().map(|c| c.get(r).cloned().unwrap_or(Value::Null)).collect()));
        }
    }
    Ok(rows)
}
