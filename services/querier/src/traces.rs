//! Loading whole traces by id, for every API that returns traces (Tempo's and Jaeger's).

use std::collections::HashSet;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use spindle_otlp::from_arrow;
use spindle_storage::TenantId;

use crate::{ApiError, Querier};

/// Most spans returned for one trace (Tempo cuts traces at a size limit too); the answer is
/// then marked partial.
pub const MAX_TRACE_SPANS: usize = 100_000;

/// A loaded trace.
pub struct Loaded {
    /// Its spans, grouped by resource and scope.
    pub resource_spans: Vec<ResourceSpans>,
    /// Bytes of span data read.
    pub bytes: u64,
    /// Whether the trace was cut at [`MAX_TRACE_SPANS`].
    pub partial: bool,
}

/// Loads a trace from each of `tenants`, optionally only the spans starting within `range`;
/// spans seen twice (a retried export) appear once.
pub async fn load(
    q: &Querier,
    tenants: &[TenantId],
    id: [u8; 16],
    range: Option<(i64, i64)>,
) -> Result<Loaded, ApiError> {
    let mut batches = Vec::new();
    let mut rows = 0;
    for tenant in tenants {
        let remaining = MAX_TRACE_SPANS + 1 - rows.min(MAX_TRACE_SPANS + 1);
        if remaining == 0 {
            break;
        }
        let got = q.engine.trace_by_id(tenant, id, range, remaining).await?;
        rows += got.iter().map(|b| b.num_rows()).sum::<usize>();
        batches.extend(got);
    }
    let partial = rows > MAX_TRACE_SPANS;
    let bytes = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
    let mut resource_spans = from_arrow::batches_to_resource_spans(&batches)
        .map_err(|e| ApiError::from(spindle_query::QueryError::Internal(e.to_string())))?;
    let mut seen = HashSet::new();
    for rs in &mut resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| seen.insert(s.span_id.clone()));
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    if partial {
        truncate_spans(&mut resource_spans, MAX_TRACE_SPANS);
    }
    Ok(Loaded { resource_spans, bytes, partial })
}

/// Keeps the first `max` spans.
fn truncate_spans(resource_spans: &mut Vec<ResourceSpans>, max: usize) {
    let mut left = max;
    for rs in resource_spans.iter_mut() {
        for ss in &mut rs.scope_spans {
            let keep = ss.spans.len().min(left);
            ss.spans.truncate(keep);
            left -= keep;
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    #[test]
    fn truncation_keeps_the_first_spans() {
        let rs = |n: usize| ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: vec![Span::default(); n], ..Default::default() }],
            ..Default::default()
        };
        let mut list = vec![rs(3), rs(4), rs(2)];
        truncate_spans(&mut list, 5);
        let counts: Vec<usize> = list.iter().map(|r| r.scope_spans[0].spans.len()).collect();
        assert_eq!(counts, vec![3, 2]);
    }
}
