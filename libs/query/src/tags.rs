//! Tag names and tag values for Grafana's autocomplete.
//!
//! Without a filter, blocks answer from the tag summary in their footer
//! (`spindle_storage::tags`, cached here); only blocks without one, keys whose values a summary
//! left out, and unflushed spans are scanned. With a filter (`q={...}`, the query being typed),
//! the spans it selects are scanned with the filter pushed into the scan, and the scan stops
//! once `limit` names or values are found.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{ident, lit, Expr};
use futures::StreamExt;
use spindle_schema::{attr_map_column, col as c, AttrScope, AttrType, DEDICATED_COLUMNS};
use spindle_storage::tags::TagSummary;
use spindle_storage::{BlockMeta, TenantId};
use spindle_traceql::{Attribute, AttributeScope, Field, FieldExpr, Intrinsic};

use crate::hints::{time_filter, ScanHints};
use crate::traceql::fields::{FieldCompiler, Frame};
use crate::{QueryEngine, QueryError, Result};

/// The scopes tag names are listed by.
pub const SCOPES: [&str; 5] = ["resource", "span", "event", "link", "instrumentation"];

/// Intrinsics listed under scope `intrinsic`, as Tempo 2.9 lists them.
pub const INTRINSIC_TAGS: [&str; 20] = [
    "duration",
    "kind",
    "name",
    "status",
    "statusMessage",
    "traceDuration",
    "rootServiceName",
    "rootName",
    "span:status",
    "span:statusMessage",
    "span:duration",
    "span:name",
    "span:kind",
    "trace:rootName",
    "trace:rootService",
    "trace:duration",
    "event:name",
    "event:timeSinceStart",
    "instrumentation:name",
    "instrumentation:version",
];

/// Attribute names found, per scope (in [`SCOPES`] order).
#[derive(Debug, Default, Clone)]
pub struct TagNames {
    /// Names per scope.
    pub scopes: [BTreeSet<String>; 5],
}

impl TagNames {
    fn scope_mut(&mut self, scope: &str) -> &mut BTreeSet<String> {
        let i = SCOPES.iter().position(|s| *s == scope).unwrap_or(1);
        &mut self.scopes[i]
    }

    fn full(&self, limit: usize) -> bool {
        self.scopes.iter().all(|s| s.len() >= limit)
    }

    /// Adds another tenant's names.
    pub fn extend(&mut self, other: TagNames) {
        for (a, b) in self.scopes.iter_mut().zip(other.scopes) {
            a.extend(b);
        }
    }
}

/// One distinct value and its type (`string`, `int`, `float`, `bool`, `keyword`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagValue {
    /// Type name.
    pub ty: String,
    /// The value as text.
    pub value: String,
}

/// What a tag lookup looks at.
#[derive(Debug, Clone)]
pub struct TagQuery {
    /// Spans starting within `[start, end]`, unix ns.
    pub range: (i64, i64),
    /// Most names (per scope) or values.
    pub limit: usize,
    /// Only spans this condition selects (the `{ ... }` of `q`).
    pub filter: Option<FieldExpr>,
}

/// Cached tag summaries of blocks, by path (blocks never change).
pub type SummaryCache = moka::future::Cache<String, Arc<Option<TagSummary>>>;

/// A cache of up to `entries` block summaries.
pub fn summary_cache(entries: u64) -> SummaryCache {
    moka::future::Cache::new(entries)
}

fn scope_of(s: AttrScope) -> &'static str {
    match s {
        AttrScope::Resource => "resource",
        AttrScope::Span => "span",
    }
}

impl QueryEngine {
    async fn block_summary(&self, block: &BlockMeta) -> Option<Arc<Option<TagSummary>>> {
        let store = self.source.object_store();
        let path = block.path.clone();
        let size = block.bytes;
        let load = async move { spindle_storage::tags::read_summary(store, &path, size).await.map(Arc::new) };
        self.tag_summaries.try_get_with(block.path.clone(), load).await.ok()
    }

    /// Block summaries in the range, and the paths of blocks that have one.
    async fn summaries(&self, tenant: &TenantId, range: (i64, i64)) -> Result<Vec<(String, Arc<Option<TagSummary>>)>> {
        let hints = ScanHints { time_range: Some(range), trace_ids: None };
        let snapshot = self.source.load(tenant, &hints, Some(Vec::new())).await?;
        let mut out = Vec::new();
        for b in &snapshot.blocks {
            if let Some(s) = self.block_summary(b).await {
                if s.is_some() {
                    out.push((b.path.clone(), s));
                }
            }
        }
        Ok(out)
    }

    fn filter_expr(&self, query: &TagQuery) -> Result<Expr> {
        let mut cond = time_filter(query.range.0, query.range.1);
        if let Some(f) = &query.filter {
            cond = cond.and(FieldCompiler::new(Frame::Spans).condition(f)?.condition());
        }
        Ok(cond)
    }

    /// Attribute names of spans in range (selected by the filter, if any), at most `limit` per scope.
    pub async fn tag_names(&self, tenant: &TenantId, query: &TagQuery) -> Result<TagNames> {
        let mut names = TagNames::default();
        let mut excluded = HashSet::new();
        if query.filter.is_none() {
            for (path, s) in self.summaries(tenant, query.range).await? {
                let Some(s) = s.as_ref() else { continue };
                for scope in SCOPES {
                    if let Some(tags) = s.scopes.get(scope) {
                        names.scope_mut(scope).extend(tags.keys.keys().cloned());
                    }
                }
                if SCOPES.iter().all(|sc| s.scopes.get(*sc).is_none_or(|t| t.complete)) {
                    excluded.insert(path);
                }
            }
        }
        if !names.full(query.limit) {
            let mut columns: Vec<Expr> = DEDICATED_COLUMNS.iter().map(|d| ident(d.column)).collect();
            for scope in [AttrScope::Resource, AttrScope::Span] {
                for ty in AttrType::ALL {
                    columns.push(ident(attr_map_column(scope, ty)));
                }
            }
            columns.extend([ident(c::SCOPE_ATTRS), ident(c::EVENTS), ident(c::LINKS)]);
            let ctx = self.session(tenant)?;
            let table = crate::table::SpansTable::new(tenant.clone(), self.source.clone()).excluding(excluded);
            let df = ctx.read_table(Arc::new(table))?.filter(self.filter_expr(query)?)?.select(columns)?;
            let mut stream = df.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                collect_names(&batch?, &mut names);
                if names.full(query.limit) {
                    break;
                }
            }
        }
        for s in &mut names.scopes {
            *s = std::mem::take(s).into_iter().take(query.limit).collect();
        }
        Ok(names)
    }

    /// Distinct values of `tag` in spans in range (selected by the filter, if any), at most `limit`.
    pub async fn tag_values(&self, tenant: &TenantId, tag: &Field, query: &TagQuery) -> Result<Vec<TagValue>> {
        let keyword = |v: &[&str]| v.iter().map(|k| TagValue { ty: "keyword".into(), value: k.to_string() }).collect();
        let (expr, summary_key): (Field, Option<(Vec<&'static str>, String)>) = match tag {
            Field::Intrinsic(Intrinsic::Status) => return Ok(keyword(&["error", "ok", "unset"])),
            Field::Intrinsic(Intrinsic::Kind) => {
                return Ok(keyword(&["client", "consumer", "internal", "producer", "server", "unspecified"]))
            }
            Field::Intrinsic(
                Intrinsic::Duration
                | Intrinsic::TraceDuration
                | Intrinsic::EventTimeSinceStart
                | Intrinsic::TraceId
                | Intrinsic::SpanId
                | Intrinsic::ParentId
                | Intrinsic::LinkTraceId
                | Intrinsic::LinkSpanId
                | Intrinsic::NestedSetLeft
                | Intrinsic::NestedSetRight
                | Intrinsic::NestedSetParent
                | Intrinsic::ChildCount
                | Intrinsic::Parent,
            ) => return Ok(Vec::new()),
            Field::Intrinsic(Intrinsic::Name) => (tag.clone(), Some((vec!["intrinsic"], "name".into()))),
            Field::Intrinsic(i @ (Intrinsic::RootName | Intrinsic::RootServiceName | Intrinsic::EventName)) => {
                // The root's values are among all spans' values; events are read per element.
                let f = match i {
                    Intrinsic::RootName => Field::Intrinsic(Intrinsic::Name),
                    Intrinsic::RootServiceName => Field::Attribute(Attribute {
                        scope: AttributeScope::Resource,
                        parent: false,
                        name: "service.name".into(),
                    }),
                    _ => return self.element_values(tenant, tag, query).await,
                };
                let key = match &f {
                    Field::Attribute(_) => (vec!["resource"], "service.name".to_string()),
                    _ => (vec!["intrinsic"], "name".to_string()),
                };
                (f, Some(key))
            }
            Field::Intrinsic(_) => (tag.clone(), None),
            Field::Attribute(a) => match a.scope {
                AttributeScope::Span => (tag.clone(), Some((vec!["span"], a.name.clone()))),
                AttributeScope::Resource => (tag.clone(), Some((vec!["resource"], a.name.clone()))),
                AttributeScope::Unscoped => (tag.clone(), Some((vec!["span", "resource"], a.name.clone()))),
                AttributeScope::Instrumentation => (tag.clone(), Some((vec!["instrumentation"], a.name.clone()))),
                AttributeScope::Event | AttributeScope::Link => return self.element_values(tenant, tag, query).await,
            },
        };
        let mut values = BTreeSet::new();
        let mut excluded = HashSet::new();
        if let (None, Some((scopes, key))) = (&query.filter, &summary_key) {
            for (path, s) in self.summaries(tenant, query.range).await? {
                let Some(s) = s.as_ref() else { continue };
                let mut complete = true;
                for scope in scopes {
                    let Some(tags) = s.scopes.get(*scope) else { continue };
                    match tags.keys.get(key) {
                        Some(v) => {
                            values.extend(
                                v.values.iter().map(|(ty, value)| TagValue { ty: ty.clone(), value: value.clone() }),
                            );
                            complete &= v.complete;
                        }
                        None => complete &= tags.complete,
                    }
                }
                if complete {
                    excluded.insert(path);
                }
            }
        }
        if values.len() < query.limit {
            let typed = FieldCompiler::new(Frame::Spans).value(&FieldExpr::Field(expr.clone()))?;
            let mut select = Vec::new();
            let mut types = Vec::new();
            for (ty, e) in [("string", typed.str), ("int", typed.int), ("float", typed.float), ("bool", typed.bool)] {
                if let Some(e) = e {
                    select.push(e.alias(format!("v{}", types.len())));
                    types.push(ty);
                }
            }
            if select.is_empty() {
                return Ok(values.into_iter().take(query.limit).collect());
            }
            let any = select
                .iter()
                .map(|e| match e {
                    Expr::Alias(a) => a.expr.as_ref().clone().is_not_null(),
                    other => other.clone().is_not_null(),
                })
                .reduce(Expr::or)
                .unwrap_or(lit(true));
            let ctx = self.session(tenant)?;
            let table = crate::table::SpansTable::new(tenant.clone(), self.source.clone()).excluding(excluded);
            let df = ctx.read_table(Arc::new(table))?.filter(self.filter_expr(query)?.and(any))?.select(select)?;
            let mut stream = df.execute_stream().await?;
            'outer: while let Some(batch) = stream.next().await {
                let batch = batch?;
                for (i, ty) in types.iter().enumerate() {
                    collect_values(batch.column(i).as_ref(), ty, &mut values);
                    if values.len() >= query.limit {
                        break 'outer;
                    }
                }
            }
        }
        Ok(values.into_iter().take(query.limit).collect())
    }

    /// Values of an event or link field: spans are scanned and their elements read.
    async fn element_values(&self, tenant: &TenantId, tag: &Field, query: &TagQuery) -> Result<Vec<TagValue>> {
        let (column, key) = match tag {
            Field::Attribute(Attribute { scope: AttributeScope::Event, name, .. }) => (c::EVENTS, Some(name.as_str())),
            Field::Attribute(Attribute { scope: AttributeScope::Link, name, .. }) => (c::LINKS, Some(name.as_str())),
            Field::Intrinsic(Intrinsic::EventName) => (c::EVENTS, None),
            _ => return Err(QueryError::BadRequest(format!("{tag} has no values to list"))),
        };
        let ctx = self.session(tenant)?;
        let df = ctx.table("spans").await?.filter(self.filter_expr(query)?)?.select(vec![ident(column)])?;
        let mut stream = df.execute_stream().await?;
        let mut values = BTreeSet::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let Some(list) = batch.column(0).as_list_opt::<i32>() else { continue };
            let Some(items) = list.values().as_struct_opt() else { continue };
            match key {
                None => {
                    if let Some(names) = items.column_by_name("name") {
                        collect_values(names.as_ref(), "string", &mut values);
                    }
                }
                Some(key) => {
                    let Some(map) = items.column_by_name("attrs").and_then(|m| m.as_map_opt()) else { continue };
                    let keys = map.keys().as_string::<i32>();
                    let raw = map.values().as_binary::<i32>();
                    for i in 0..keys.len() {
                        if keys.value(i) == key && raw.is_valid(i) {
                            if let Some(v) = any_value_text(raw.value(i)) {
                                values.insert(v);
                            }
                        }
                    }
                }
            }
            if values.len() >= query.limit {
                break;
            }
        }
        Ok(values.into_iter().take(query.limit).collect())
    }
}

fn any_value_text(bytes: &[u8]) -> Option<TagValue> {
    use spindle_otlp::otlp::common::v1::any_value::Value;
    let (ty, value) = match spindle_otlp::decode_any(bytes).value? {
        Value::StringValue(s) => ("string", s),
        Value::IntValue(i) => ("int", i.to_string()),
        Value::DoubleValue(f) => ("float", f.to_string()),
        Value::BoolValue(b) => ("bool", b.to_string()),
        _ => return None,
    };
    Some(TagValue { ty: ty.into(), value })
}

fn collect_names(batch: &RecordBatch, names: &mut TagNames) {
    for d in DEDICATED_COLUMNS {
        if let Some(column) = batch.column_by_name(d.column) {
            if column.null_count() < column.len() {
                names.scope_mut(scope_of(d.scope)).insert(d.key.to_string());
            }
        }
    }
    let mut keys_of = |map: &arrow::array::MapArray, scope: &str| {
        let set = names.scope_mut(scope);
        let keys = map.keys().as_string::<i32>();
        for i in 0..keys.len() {
            if !set.contains(keys.value(i)) {
                set.insert(keys.value(i).to_string());
            }
        }
    };
    for scope in [AttrScope::Resource, AttrScope::Span] {
        for ty in AttrType::ALL {
            if let Some(map) = batch.column_by_name(&attr_map_column(scope, ty)).and_then(|m| m.as_map_opt()) {
                keys_of(map, scope_of(scope));
            }
        }
    }
    if let Some(map) = batch.column_by_name(c::SCOPE_ATTRS).and_then(|m| m.as_map_opt()) {
        keys_of(map, "instrumentation");
    }
    for (column, scope) in [(c::EVENTS, "event"), (c::LINKS, "link")] {
        let map = batch
            .column_by_name(column)
            .and_then(|l| l.as_list_opt::<i32>())
            .and_then(|l| l.values().as_struct_opt().and_then(|s| s.column_by_name("attrs").cloned()));
        if let Some(map) = map.as_ref().and_then(|m| m.as_map_opt()) {
            keys_of(map, scope);
        }
    }
}

fn collect_values(column: &dyn Array, ty: &str, out: &mut BTreeSet<TagValue>) {
    for i in 0..column.len() {
        if column.is_null(i) {
            continue;
        }
        let value = match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().value(i).to_string(),
            DataType::Utf8View => column.as_string_view().value(i).to_string(),
            DataType::Int64 => column.as_primitive::<Int64Type>().value(i).to_string(),
            DataType::Float64 => column.as_primitive::<Float64Type>().value(i).to_string(),
            DataType::Boolean => column.as_boolean().value(i).to_string(),
            _ => continue,
        };
        out.insert(TagValue { ty: ty.to_string(), value });
    }
}
