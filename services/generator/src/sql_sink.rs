//! Collected samples written to the object store as Parquet files (the SQL table `metrics`),
//! and dropped again by name once past the tenant's retention.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Builder, MapBuilder, RecordBatch, StringBuilder, TimestampMillisecondBuilder};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use spindle_schema::metrics::metrics_schema;
use spindle_storage::metric_files::{metrics_dir, metrics_file_last_ms, metrics_file_path};
use spindle_storage::{Retention, TenantId};

use crate::series::MetricFamily;
use crate::GeneratorError;

/// Rows one tenant may buffer; older rows are dropped (and counted) past this.
const MAX_BUFFERED_ROWS: usize = 2_000_000;

struct Rows {
    timestamp: TimestampMillisecondBuilder,
    metric: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    value: Float64Builder,
    len: usize,
    first_ms: i64,
    last_ms: i64,
}

impl Rows {
    fn new() -> Self {
        Self {
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            metric: StringBuilder::new(),
            labels: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            value: Float64Builder::new(),
            len: 0,
            first_ms: i64::MAX,
            last_ms: i64::MIN,
        }
    }

    fn finish(&mut self) -> Result<RecordBatch, GeneratorError> {
        let schema = metrics_schema();
        let labels = self.labels.finish();
        // The builder names its fields "keys"/"values" like the schema; cast to the exact type.
        let labels = arrow::compute::cast(&labels, schema.field(2).data_type())?;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(self.timestamp.finish()),
                Arc::new(self.metric.finish()),
                labels,
                Arc::new(self.value.finish()),
            ],
        )?;
        self.len = 0;
        Ok(batch)
    }
}

/// Buffers samples per tenant and writes them out.
pub struct SqlSink {
    store: Arc<dyn ObjectStore>,
    writer_id: String,
    rows: HashMap<TenantId, Rows>,
    /// Files that failed to upload, retried at the next flush.
    unsent: Vec<(TenantId, i64, i64, RecordBatch)>,
}

impl SqlSink {
    /// A sink writing into `store`; files carry this process' `writer_id`.
    pub fn new(store: Arc<dyn ObjectStore>, writer_id: String) -> Self {
        Self { store, writer_id, rows: HashMap::new(), unsent: Vec::new() }
    }

    /// Adds one collection of `tenant`'s samples; returns rows dropped for lack of room.
    pub fn add(&mut self, tenant: &TenantId, families: &[MetricFamily], timestamp_ms: i64) -> u64 {
        let rows = self.rows.entry(tenant.clone()).or_insert_with(Rows::new);
        let mut dropped = 0;
        for s in families.iter().flat_map(|f| &f.samples) {
            if rows.len >= MAX_BUFFERED_ROWS {
                dropped += 1;
                continue;
            }
            rows.timestamp.append_value(timestamp_ms);
            rows.metric.append_value(&s.name);
            for (k, v) in &s.labels {
                rows.labels.keys().append_value(k);
                rows.labels.values().append_value(v);
            }
            // Appending a map entry never fails for a non-null map.
            let _ = rows.labels.append(true);
            rows.value.append_value(s.value);
            rows.len += 1;
            rows.first_ms = rows.first_ms.min(timestamp_ms);
            rows.last_ms = rows.last_ms.max(timestamp_ms);
        }
        dropped
    }

    /// Writes every buffered row; returns the rows written. A file that cannot be written is
    /// kept and tried again next time.
    pub async fn flush(&mut self) -> Result<u64, GeneratorError> {
        for (tenant, rows) in self.rows.iter_mut() {
            if rows.len == 0 {
                continue;
            }
            let (first, last) = (rows.first_ms, rows.last_ms);
            rows.first_ms = i64::MAX;
            rows.last_ms = i64::MIN;
            self.unsent.push((tenant.clone(), first, last, rows.finish()?));
        }
        let mut written = 0;
        let mut failed = Vec::new();
        let mut first_error = None;
        for (tenant, first, last, batch) in std::mem::take(&mut self.unsent) {
            match self.put(&tenant, first, last, &batch).await {
                Ok(()) => written += batch.num_rows() as u64,
                Err(e) => {
                    first_error.get_or_insert(e);
                    failed.push((tenant, first, last, batch));
                }
            }
        }
        // Keep at most 64 unsent files so memory stays bounded; the newest beyond that are lost.
        if failed.len() > 64 {
            let lost: usize = failed[64..].iter().map(|f| f.3.num_rows()).sum();
            tracing::warn!(
                rows = lost,
                "metrics generator: sample files could not be written for too long; rows dropped"
            );
            failed.truncate(64);
        }
        self.unsent = failed;
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    async fn put(&self, tenant: &TenantId, first: i64, last: i64, batch: &RecordBatch) -> Result<(), GeneratorError> {
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
        writer.write(batch)?;
        writer.close()?;
        let path = metrics_file_path(tenant, first, last, &self.writer_id);
        self.store.put(&path, PutPayload::from(buf)).await?;
        Ok(())
    }

    /// Deletes the metric files of the tenants it buffers for whose newest sample is older than
    /// the tenant's retention.
    pub async fn apply_retention(&self, retention: &Retention, now_ms: i64) -> Result<u64, GeneratorError> {
        let policy = retention.get();
        let mut deleted = 0;
        for tenant in self.rows.keys() {
            let Some(window) = policy.for_tenant(tenant.as_str()) else { continue };
            let cutoff = now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
            let mut listing = self.store.list(Some(&metrics_dir(tenant)));
            let mut old = Vec::new();
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if meta.location.filename().and_then(metrics_file_last_ms).is_some_and(|last| last < cutoff) {
                    old.push(meta.location);
                }
            }
            for path in old {
                self.store.delete(&path).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// How often retention is applied to metric files.
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);
