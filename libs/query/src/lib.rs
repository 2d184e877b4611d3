//! Query execution over a tenant's spans.
//!
//! [`table::SpansTable`] is a DataFusion table whose scan asks the storage shards for their
//! unflushed spans and committed blocks ([`source::SpanSource`]), prunes blocks by time and trace
//! id, and unions a Parquet scan of the blocks (bloom filter, page index and predicate pushdown)
//! with an in-memory scan of the unflushed batches. [`QueryEngine`] builds the Tempo-style
//! queries (search, tags) and user SQL on top of that table; trace by id reads the same
//! snapshot's blocks directly ([`trace_read`]), without planning a query.

pub mod block_reader;
pub mod filter;
pub mod hints;
pub mod page_read;
pub mod parent_exec;
pub mod prune;
pub mod refresh;
pub mod source;
pub mod table;
pub mod tags;
pub mod trace_read;
pub mod traceql;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::parser::ParserError;
use futures::TryStreamExt;
use spindle_storage::TenantId;

pub use source::SpanSource;

/// Errors of query execution, classified for HTTP status mapping.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query is wrong (bad SQL, bad TraceQL, bad parameter): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// A storage shard cannot answer now: HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// The query exceeded a resource limit: HTTP 429/413.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// The answer would exceed its row or byte cap: HTTP 422 (narrow the query).
    #[error("{0}")]
    ResultTooLarge(String),
    /// Anything else: HTTP 500.
    #[error("{0}")]
    Internal(String),
}

impl From<datafusion::error::DataFusionError> for QueryError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as E;
        match e.find_root() {
            E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) => {
                QueryError::BadRequest(e.to_string())
            }
            E::ResourcesExhausted(_) => QueryError::ResourcesExhausted(e.to_string()),
            E::External(inner) if inner.downcast_ref::<ParserError>().is_some() => {
                QueryError::BadRequest(e.to_string())
            }
            E::External(inner) => match inner.downcast_ref::<QueryError>() {
                Some(QueryError::Unavailable(m)) => QueryError::Unavailable(m.clone()),
                _ => QueryError::Internal(e.to_string()),
            },
            _ => QueryError::Internal(e.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(e: arrow::error::ArrowError) -> Self {
        QueryError::Internal(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// Limits and tuning of query execution.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory all running queries may use together (bytes).
    pub memory_limit: usize,
    /// Parallelism of one query.
    pub target_partitions: usize,
    /// Longest a query (SQL, TraceQL search or metrics) may run.
    pub timeout: std::time::Duration,
    /// Memory for the Parquet footers and page indexes of recently read blocks (bytes).
    pub metadata_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: 512 * 1024 * 1024,
            target_partitions: 2,
            timeout: std::time::Duration::from_secs(60),
            metadata_cache_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The tenant's generated metric samples (the metrics generator's sample files), as table
/// `metrics` (schema `spindle_schema::metrics`).
fn metrics_table(tenant: &TenantId) -> Result<Arc<ListingTable>> {
    let dir = spindle_storage::metric_files::metrics_dir(tenant);
    let url = ListingTableUrl::parse(format!("{}{}/", table::BLOCKS_URL.as_str(), dir))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(spindle_schema::metrics::metrics_schema());
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// Runs queries for any tenant.
pub struct QueryEngine {
    source: Arc<SpanSource>,
    runtime: Arc<RuntimeEnv>,
    config: QueryConfig,
    /// Tag summaries read from block footers.
    tag_summaries: tags::SummaryCache,
}

impl QueryEngine {
    /// An engine reading through `source`.
    pub fn new(source: Arc<SpanSource>, config: QueryConfig) -> Result<Self> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit, 1.0)
            .with_metadata_cache_limit(config.metadata_cache_bytes)
            // Listings (the `metrics` table's sample files) are re-read after 10 s: new files
            // appear every flush, and DataFusion would otherwise keep the first listing forever.
            .with_object_list_cache_ttl(Some(std::time::Duration::from_secs(10)))
            .build_arc()?;
        runtime.register_object_store(table::BLOCKS_URL.as_ref(), source.object_store());
        Ok(Self { source, runtime, config, tag_summaries: tags::summary_cache(100_000) })
    }

    /// A DataFusion session where table `spans` is `tenant`'s spans.
    pub fn session(&self, tenant: &TenantId) -> Result<SessionContext> {
        let mut config =
            SessionConfig::new().with_target_partitions(self.config.target_partitions).with_information_schema(false);
        let options = config.options_mut();
        options.execution.parquet.schema_force_view_types = false;
        options.execution.parquet.pushdown_filters = true;
        options.execution.parquet.reorder_filters = true;
        options.execution.parquet.bloom_filter_on_read = true;
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        ctx.register_table("spans", Arc::new(table::SpansTable::new(tenant.clone(), self.source.clone())))?;
        ctx.register_table("metrics", metrics_table(tenant)?)?;
        Ok(ctx)
    }

    /// The spans of a trace, optionally only those starting within `[start, end]` (unix ns), at
    /// most `max_spans` of them (memory stays bounded for huge traces): a caller that gets
    /// `max_spans` rows back should treat the trace as possibly partial. Blocks are read by
    /// [`trace_read::read_trace`], concurrently; unflushed spans come from the shards' leaders.
    pub async fn trace_by_id(
        &self,
        tenant: &TenantId,
        trace_id: [u8; 16],
        range: Option<(i64, i64)>,
        max_spans: usize,
    ) -> Result<Vec<RecordBatch>> {
        let hints = hints::ScanHints { time_range: range, trace_ids: Some(vec![trace_id]) };
        let snapshot = self.source.load(tenant, &hints, None).await?;
        let factory = block_reader::PageIndexedReaderFactory(CachedParquetFileReaderFactory::new(
            self.source.object_store(),
            self.runtime.cache_manager.get_file_metadata_cache(),
        ));
        let blocks = snapshot.blocks.iter().map(|b| trace_read::read_trace(&factory, b, &trace_id, range, max_spans));
        let unflushed = snapshot.unflushed.into_iter().map(|s| async move {
            let batches: Vec<RecordBatch> =
                s.try_collect().await.map_err(|e| QueryError::Unavailable(e.to_string()))?;
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                let b = trace_read::only_trace(&b, &trace_id)?;
                out.push(match range {
                    Some((start, end)) => trace_read::starting_within(&b, start, end)?,
                    None => b,
                });
            }
            Ok::<_, QueryError>(out)
        });
        let (blocks, unflushed) =
            futures::try_join!(futures::future::try_join_all(blocks), futures::future::try_join_all(unflushed))?;
        let mut out = Vec::new();
        let mut spans = 0;
        for batch in blocks.into_iter().chain(unflushed).flatten() {
            let keep = batch.num_rows().min(max_spans - spans);
            if keep > 0 {
                out.push(batch.slice(0, keep));
            }
            spans += keep;
        }
        Ok(out)
    }

    /// Runs `work` within the query time limit.
    pub async fn bounded<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let limit = self.config.timeout;
        tokio::time::timeout(limit, work).await.map_err(|_| {
            QueryError::ResourcesExhausted(format!("query ran longer than the limit of {} s", limit.as_secs()))
        })?
    }

    /// Runs user SQL against the tenant's `spans` table. Only queries are allowed: no DDL,
    /// DML or `SET` statements. The answer is pulled batch by batch and the query stopped
    /// (with [`QueryError::ResultTooLarge`]) once it passes `max_rows` rows or `max_bytes`
    /// bytes of Arrow data, so no answer grows without bound.
    pub async fn sql(
        &self,
        tenant: &TenantId,
        sql: &str,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        spindle_sql_guard::check_sql(sql).await.map_err(|e| match e.is_bad_input() {
            true => QueryError::BadRequest(e.to_string()),
            false => QueryError::Internal(e.to_string()),
        })?;
        let ctx = self.session(tenant)?;
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let run = async {
            let df = ctx.sql_with_options(sql, options).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                let batch = batch?;
                rows += batch.num_rows();
                bytes += batch.get_array_memory_size();
                if rows > max_rows || bytes > max_bytes {
                    return Err(QueryError::ResultTooLarge(format!(
                        "the answer has more than {max_rows} rows or {max_bytes} bytes (the limits of one SQL answer): add a LIMIT, select fewer columns or aggregate"
                    )));
                }
                batches.push(batch);
            }
            Ok::<_, QueryError>((schema, batches))
        };
        self.bounded(run).await
    }
}
