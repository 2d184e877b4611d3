//! OTLP traces -> span `RecordBatch`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, FixedSizeBinaryBuilder, Int64Builder, ListArray, MapBuilder, StringBuilder, StructArray,
    TimestampNanosecondArray, UInt32Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use spindle_schema::{span_schema, AttrScope, AttrType, DEDICATED_COLUMNS, SPAN_KINDS, STATUS_CODES};

use crate::attrs::{dedicated_index, encoded_map_builder, push_encoded_row, AttrMapsBuilder};
use crate::Result;

/// The outcome of converting one export request.
#[derive(Debug)]
pub struct Converted {
    /// The accepted spans (may have zero rows).
    pub batch: RecordBatch,
    /// Spans refused because they are invalid (bad ids or times).
    pub rejected: u64,
    /// Why the first refused span was refused.
    pub first_error: Option<String>,
    /// Protobuf-encoded size of each accepted span, in row order (the metrics generator's
    /// `traces_spanmetrics_size_total`); empty unless asked for.
    pub span_sizes: Vec<u32>,
}

/// Largest span data one request may expand to by default (Arrow string columns overflow at 2 GiB).
pub const DEFAULT_MAX_EXPANDED_BYTES: usize = 512 * 1024 * 1024;

/// Converts OTLP resource spans into one batch with the span schema, refusing requests whose
/// rows would exceed [`DEFAULT_MAX_EXPANDED_BYTES`].
pub fn resource_spans_to_batch(resource_spans: &[ResourceSpans]) -> Result<Converted> {
    resource_spans_to_batch_limited(resource_spans, DEFAULT_MAX_EXPANDED_BYTES, false)
}

/// Estimated bytes of the rows a request becomes: each span repeats its resource and scope.
pub fn expanded_size(resource_spans: &[ResourceSpans]) -> usize {
    use prost::Message;
    let mut total = 0usize;
    for rs in resource_spans {
        let resource = rs.resource.as_ref().map(|r| r.encoded_len()).unwrap_or(0) + rs.schema_url.len();
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref().map(|s| s.encoded_len()).unwrap_or(0) + ss.schema_url.len();
            let spans: usize = ss.spans.iter().map(|s| s.encoded_len()).sum();
            total = total.saturating_add((resource + scope).saturating_mul(ss.spans.len())).saturating_add(spans);
        }
    }
    total
}

/// Converts OTLP resource spans into one batch with the span schema.
///
/// A request whose rows would exceed `max_expanded_bytes` (see [`expanded_size`]) is refused
/// with [`crate::ConvertError::TooLarge`]. With `span_sizes`, [`Converted::span_sizes`] holds
/// each accepted span's encoded size (a pass over its attributes, so only when needed). Invalid spans (trace id not 16 non-zero bytes, span id not 8 non-zero bytes, parent id neither
/// empty nor 8 bytes, times beyond year 2262) are counted in [`Converted::rejected`], not stored.
pub fn resource_spans_to_batch_limited(
    resource_spans: &[ResourceSpans],
    max_expanded_bytes: usize,
    span_sizes: bool,
) -> Result<Converted> {
    let split = resource_spans_to_batches(resource_spans, max_expanded_bytes, span_sizes, 1, |_| 0)?;
    let (batch, sizes) = split
        .batches
        .into_iter()
        .next()
        .map_or_else(|| (RecordBatch::new_empty(span_schema()), Vec::new()), |p| (p.batch, p.span_sizes));
    Ok(Converted { batch, rejected: split.rejected, first_error: split.first_error, span_sizes: sizes })
}

/// One batch of a [`Split`].
#[derive(Debug)]
pub struct SplitBatch {
    /// The slot its spans were put in.
    pub slot: usize,
    /// The spans (at least one).
    pub batch: RecordBatch,
    /// Protobuf-encoded size of each span, in row order; empty unless asked for.
    pub span_sizes: Vec<u32>,
}

/// A request converted into one batch per slot.
#[derive(Debug)]
pub struct Split {
    /// The non-empty batches, by slot.
    pub batches: Vec<SplitBatch>,
    /// Spans refused because they are invalid.
    pub rejected: u64,
    /// Why the first refused span was refused.
    pub first_error: Option<String>,
}

/// Converts a request as [`resource_spans_to_batch_limited`] does, but into `slots` batches:
/// each valid span goes to the batch of the slot `slot_of` picks for its trace id (a slot past
/// the last counts as the last). The spans are converted in slot order into one batch, and each
/// slot's batch is a slice of it: a request is split by shard without copying rows and at the
/// cost of one conversion.
pub fn resource_spans_to_batches(
    resource_spans: &[ResourceSpans],
    max_expanded_bytes: usize,
    span_sizes: bool,
    slots: usize,
    slot_of: impl Fn(&[u8]) -> usize,
) -> Result<Split> {
    let expanded = expanded_size(resource_spans);
    if expanded > max_expanded_bytes {
        return Err(crate::ConvertError::TooLarge(format!(
            "request expands to {expanded} bytes of span data (every span repeats its resource and scope); the limit is {max_expanded_bytes} bytes"
        )));
    }
    let slots = slots.max(1);
    let resources: Vec<ResourceRow> = resource_spans.iter().map(|rs| ResourceRow::new(rs.resource.as_ref())).collect();
    let default_scope = InstrumentationScope::default();
    // Where each valid span is, by slot: (resource, scope, span) positions.
    let mut by_slot: Vec<Vec<(u32, u32, u32)>> = vec![Vec::new(); slots];
    let mut rejected = 0;
    let mut first_error = None;
    for (r, rs) in resource_spans.iter().enumerate() {
        for (k, ss) in rs.scope_spans.iter().enumerate() {
            for (n, span) in ss.spans.iter().enumerate() {
                if let Err(reason) = validate(span) {
                    rejected += 1;
                    first_error.get_or_insert(reason);
                    continue;
                }
                let slot = if slots == 1 { 0 } else { slot_of(&span.trace_id).min(slots - 1) };
                by_slot[slot].push((r as u32, k as u32, n as u32));
            }
        }
    }
    let total: usize = by_slot.iter().map(Vec::len).sum();
    let mut b = BatchBuilder::with_capacity(total);
    let mut sizes = Vec::with_capacity(if span_sizes { total } else { 0 });
    let mut ranges = Vec::new();
    let mut start = 0;
    for (slot, spans) in by_slot.iter().enumerate() {
        if spans.is_empty() {
            continue;
        }
        ranges.push((slot, start, spans.len()));
        start += spans.len();
        for &(r, k, n) in spans {
            let rs = &resource_spans[r as usize];
            let ss = &rs.scope_spans[k as usize];
            let span = &ss.spans[n as usize];
            let scope = ss.scope.as_ref().unwrap_or(&default_scope);
            b.push(&resources[r as usize], &rs.schema_url, scope, &ss.schema_url, span)?;
            if span_sizes {
                sizes.push(u32::try_from(prost::Message::encoded_len(span)).unwrap_or(u32::MAX));
            }
        }
    }
    let batch = b.finish()?;
    let batches = ranges
        .into_iter()
        .map(|(slot, start, len)| SplitBatch {
            slot,
            batch: batch.slice(start, len),
            span_sizes: if span_sizes { sizes[start..start + len].to_vec() } else { Vec::new() },
        })
        .collect();
    Ok(Split { batches, rejected, first_error })
}

fn validate(span: &Span) -> Result<(), String> {
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span has an invalid trace id ({} bytes; must be 16 bytes, not all zero)",
            span.trace_id.len()
        ));
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span has an invalid span id ({} bytes; must be 8 bytes, not all zero)",
            span.span_id.len()
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!(
            "span has an invalid parent span id ({} bytes; must be empty or 8)",
            span.parent_span_id.len()
        ));
    }
    if span.start_time_unix_nano > i64::MAX as u64 || span.end_time_unix_nano > i64::MAX as u64 {
        return Err("span time is beyond the year 2262".to_string());
    }
    for event in &span.events {
        if event.time_unix_nano > i64::MAX as u64 {
            return Err("event time is beyond the year 2262".to_string());
        }
    }
    Ok(())
}

/// Values of the dedicated columns for one row, by column position.
type Slots<'a> = [Option<&'a Value>; DEDICATED_COLUMNS.len()];

/// A resource's attributes split once into dedicated values and residual attributes.
struct ResourceRow<'a> {
    slots: Slots<'a>,
    residual: Vec<&'a KeyValue>,
    dropped: u32,
}

impl<'a> ResourceRow<'a> {
    fn new(resource: Option<&'a Resource>) -> Self {
        let mut row = ResourceRow { slots: [None; DEDICATED_COLUMNS.len()], residual: Vec::new(), dropped: 0 };
        if let Some(r) = resource {
            row.dropped = r.dropped_attributes_count;
            split_attrs(AttrScope::Resource, &r.attributes, &mut row.slots, |kv| row.residual.push(kv));
        }
        row
    }
}

/// Puts attributes that have a dedicated column (of their value's type) into `slots`, and hands
/// the rest to `residual`. A repeated key keeps its first value in the column, later ones go to
/// the residual maps.
fn split_attrs<'a>(
    scope: AttrScope,
    attrs: &'a [KeyValue],
    slots: &mut Slots<'a>,
    mut residual: impl FnMut(&'a KeyValue),
) {
    for kv in attrs {
        let slot = dedicated_index(scope, &kv.key).and_then(|i| {
            let value = kv.value.as_ref()?.value.as_ref()?;
            let fits = matches!(
                (DEDICATED_COLUMNS[i].ty, value),
                (AttrType::Str, Value::StringValue(_)) | (AttrType::Int, Value::IntValue(_))
            );
            (fits && slots[i].is_none()).then_some((i, value))
        });
        match slot {
            Some((i, value)) => slots[i] = Some(value),
            None => residual(kv),
        }
    }
}

enum DedicatedBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
}

struct BatchBuilder {
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    name: StringBuilder,
    kind: StringBuilder,
    start: Vec<i64>,
    duration: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    dropped_attributes: UInt32Builder,
    dropped_events: UInt32Builder,
    dropped_links: UInt32Builder,
    dedicated: Vec<DedicatedBuilder>,
    resource_maps: AttrMapsBuilder,
    span_maps: AttrMapsBuilder,
    resource_dropped: UInt32Builder,
    resource_schema_url: StringBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attrs: MapBuilder<StringBuilder, BinaryBuilder>,
    scope_dropped: UInt32Builder,
    scope_schema_url: StringBuilder,
    events: EventsBuilder,
    links: LinksBuilder,
}

impl BatchBuilder {
    fn with_capacity(n: usize) -> Self {
        let dedicated = DEDICATED_COLUMNS
            .iter()
            .map(|d| match d.ty {
                AttrType::Int => DedicatedBuilder::Int(Int64Builder::with_capacity(n)),
                _ => DedicatedBuilder::Str(StringBuilder::with_capacity(n, n * 8)),
            })
            .collect();
        Self {
            trace_id: FixedSizeBinaryBuilder::with_capacity(n, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            parent_span_id: FixedSizeBinaryBuilder::with_capacity(n, 8),
            trace_state: StringBuilder::with_capacity(n, 0),
            flags: UInt32Builder::with_capacity(n),
            name: StringBuilder::with_capacity(n, n * 16),
            kind: StringBuilder::with_capacity(n, n * 6),
            start: Vec::with_capacity(n),
            duration: Int64Builder::with_capacity(n),
            status_code: StringBuilder::with_capacity(n, n * 5),
            status_message: StringBuilder::with_capacity(n, 0),
            dropped_attributes: UInt32Builder::with_capacity(n),
            dropped_events: UInt32Builder::with_capacity(n),
            dropped_links: UInt32Builder::with_capacity(n),
            dedicated,
            resource_maps: AttrMapsBuilder::new(),
            span_maps: AttrMapsBuilder::new(),
            resource_dropped: UInt32Builder::with_capacity(n),
            resource_schema_url: StringBuilder::with_capacity(n, 0),
            scope_name: StringBuilder::with_capacity(n, n * 8),
            scope_version: StringBuilder::with_capacity(n, n * 4),
            scope_attrs: encoded_map_builder(),
            scope_dropped: UInt32Builder::with_capacity(n),
            scope_schema_url: StringBuilder::with_capacity(n, 0),
            events: EventsBuilder::new(),
            links: LinksBuilder::new(),
        }
    }

    fn push(
        &mut self,
        resource: &ResourceRow<'_>,
        resource_schema_url: &str,
        scope: &InstrumentationScope,
        scope_schema_url: &str,
        span: &Span,
    ) -> Result<()> {
        self.trace_id.append_value(&span.trace_id)?;
        self.span_id.append_value(&span.span_id)?;
        if span.parent_span_id.is_empty() {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id.append_value(&span.parent_span_id)?;
        }
        self.trace_state.append_value(&span.trace_state);
        self.flags.append_value(span.flags);
        self.name.append_value(&span.name);
        self.kind.append_value(SPAN_KINDS.get(span.kind as usize).copied().unwrap_or(SPAN_KINDS[0]));
        let start = span.start_time_unix_nano as i64;
        self.start.push(start);
        self.duration.append_value((span.end_time_unix_nano as i64).wrapping_sub(start));
        let (code, message) = span.status.as_ref().map(|s| (s.code, s.message.as_str())).unwrap_or((0, ""));
        self.status_code.append_value(STATUS_CODES.get(code as usize).copied().unwrap_or(STATUS_CODES[0]));
        self.status_message.append_value(message);
        self.dropped_attributes.append_value(span.dropped_attributes_count);
        self.dropped_events.append_value(span.dropped_events_count);
        self.dropped_links.append_value(span.dropped_links_count);

        // Resource and span dedicated columns are disjoint, so the span's slots start from the resource's.
        let mut slots = resource.slots;
        let span_maps = &mut self.span_maps;
        split_attrs(AttrScope::Span, &span.attributes, &mut slots, |kv| span_maps.push(&kv.key, kv.value.as_ref()));
        span_maps.end_row()?;
        for (builder, value) in self.dedicated.iter_mut().zip(slots) {
            match (builder, value) {
                (DedicatedBuilder::Str(b), Some(Value::StringValue(s))) => b.append_value(s),
                (DedicatedBuilder::Int(b), Some(Value::IntValue(v))) => b.append_value(*v),
                (DedicatedBuilder::Str(b), _) => b.append_null(),
                (DedicatedBuilder::Int(b), _) => b.append_null(),
            }
        }
        for kv in &resource.residual {
            self.resource_maps.push(&kv.key, kv.value.as_ref());
        }
        self.resource_maps.end_row()?;

        self.resource_dropped.append_value(resource.dropped);
        self.resource_schema_url.append_value(resource_schema_url);
        self.scope_name.append_value(&scope.name);
        self.scope_version.append_value(&scope.version);
        push_encoded_row(&mut self.scope_attrs, &scope.attributes)?;
        self.scope_dropped.append_value(scope.dropped_attributes_count);
        self.scope_schema_url.append_value(scope_schema_url);
        self.events.push(span)?;
        self.links.push(span)?;
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(TimestampNanosecondArray::from(self.start).with_timezone("UTC")),
            Arc::new(self.duration.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.dropped_attributes.finish()),
            Arc::new(self.dropped_events.finish()),
            Arc::new(self.dropped_links.finish()),
        ];
        for builder in &mut self.dedicated {
            columns.push(match builder {
                DedicatedBuilder::Str(b) => Arc::new(b.finish()),
                DedicatedBuilder::Int(b) => Arc::new(b.finish()),
            });
        }
        columns.extend(self.resource_maps.finish());
        columns.extend(self.span_maps.finish());
        columns.extend([
            Arc::new(self.resource_dropped.finish()) as ArrayRef,
            Arc::new(self.resource_schema_url.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.scope_attrs.finish()),
            Arc::new(self.scope_dropped.finish()),
            Arc::new(self.scope_schema_url.finish()),
            self.events.finish()?,
            self.links.finish()?,
        ]);
        Ok(RecordBatch::try_new(span_schema(), columns)?)
    }
}

struct EventsBuilder {
    offsets: Vec<i32>,
    time: Vec<i64>,
    name: StringBuilder,
    attrs: MapBuilder<StringBuilder, BinaryBuilder>,
    dropped: UInt32Builder,
}

impl EventsBuilder {
    fn new() -> Self {
        Self {
            offsets: vec![0],
            time: Vec::new(),
            name: StringBuilder::new(),
            attrs: encoded_map_builder(),
            dropped: UInt32Builder::new(),
        }
    }

    fn push(&mut self, span: &Span) -> Result<()> {
        for e in &span.events {
            self.time.push(e.time_unix_nano as i64);
            self.name.append_value(&e.name);
            push_encoded_row(&mut self.attrs, &e.attributes)?;
            self.dropped.append_value(e.dropped_attributes_count);
        }
        self.offsets.push(self.time.len() as i32);
        Ok(())
    }

    fn finish(mut self) -> Result<ArrayRef> {
        let children: Vec<ArrayRef> = vec![
            Arc::new(TimestampNanosecondArray::from(self.time).with_timezone("UTC")),
            Arc::new(self.name.finish()),
            Arc::new(self.attrs.finish()),
            Arc::new(self.dropped.finish()),
        ];
        let items = StructArray::try_new(spindle_schema::event_fields(), children, None)?;
        let list = ListArray::try_new(
            spindle_schema::event_item_field(),
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(items),
            None,
        )?;
        Ok(Arc::new(list))
    }
}

struct LinksBuilder {
    offsets: Vec<i32>,
    trace_id: BinaryBuilder,
    span_id: BinaryBuilder,
    trace_state: StringBuilder,
    attrs: MapBuilder<StringBuilder, BinaryBuilder>,
    dropped: UInt32Builder,
    flags: UInt32Builder,
}

impl LinksBuilder {
    fn new() -> Self {
        Self {
            offsets: vec![0],
            trace_id: BinaryBuilder::new(),
            span_id: BinaryBuilder::new(),
            trace_state: StringBuilder::new(),
            attrs: encoded_map_builder(),
            dropped: UInt32Builder::new(),
            flags: UInt32Builder::new(),
        }
    }

    fn push(&mut self, span: &Span) -> Result<()> {
        for l in &span.links {
            self.trace_id.append_value(&l.trace_id);
            self.span_id.append_value(&l.span_id);
            self.trace_state.append_value(&l.trace_state);
            push_encoded_row(&mut self.attrs, &l.attributes)?;
            self.dropped.append_value(l.dropped_attributes_count);
            self.flags.append_value(l.flags);
        }
        self.offsets.push(*self.offsets.last().unwrap_or(&0) + span.links.len() as i32);
        Ok(())
    }

    fn finish(mut self) -> Result<ArrayRef> {
        let children: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.attrs.finish()),
            Arc::new(self.dropped.finish()),
            Arc::new(self.flags.finish()),
        ];
        let items = StructArray::try_new(spindle_schema::link_fields(), children, None)?;
        let list = ListArray::try_new(
            spindle_schema::link_item_field(),
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(items),
            None,
        )?;
        Ok(Arc::new(list))
    }
}
