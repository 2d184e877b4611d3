//! The `spans` table: Parquet blocks plus unflushed data, as one DataFusion table.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;
use spindle_schema::{block_schema, col, span_schema};
use spindle_storage::TenantId;

use crate::block_reader::PageIndexedReaderFactory;
use crate::hints::ScanHints;
use crate::parent_exec::ParentIdExec;
use crate::source::{SpanSource, UnflushedStream};
use crate::QueryError;

/// URL under which the block object store is registered with DataFusion.
pub static BLOCKS_URL: LazyLock<ObjectStoreUrl> =
    LazyLock::new(|| ObjectStoreUrl::parse("spindle://blocks").unwrap_or_else(|_| ObjectStoreUrl::local_filesystem()));

/// One tenant's spans.
#[derive(Clone)]
pub struct SpansTable {
    tenant: TenantId,
    source: Arc<SpanSource>,
    schema: SchemaRef,
    /// Blocks (by path) left out of scans: their answer is known another way.
    excluded: Arc<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpansTable").field("tenant", &self.tenant).finish()
    }
}

impl SpansTable {
    /// The spans of `tenant`, read through `source`.
    pub fn new(tenant: TenantId, source: Arc<SpanSource>) -> Self {
        Self { tenant, source, schema: span_schema(), excluded: Arc::default() }
    }

    /// The Parquet scan of `blocks`, with `parent_span_id` rebuilt from the stored offsets when
    /// it is projected ([`ParentIdExec`]). Rebuilding needs every earlier row of a trace, so
    /// then only predicates on `trace_id` alone (which keep or drop whole traces) reach the
    /// Parquet reader's page and row filters; the others still prune blocks and row groups by
    /// Bloom filter and are applied above the scan. A predicate on `parent_span_id` never reaches
    /// the reader: the stored column is not the logical one.
    async fn scan_blocks(
        &self,
        state: &dyn Session,
        blocks: &[spindle_storage::BlockMeta],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let file_schema = block_schema();
        let index = |name: &str| file_schema.index_of(name);
        let parent = index(col::PARENT_SPAN_ID)?;
        let requested: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let rebuild = requested.contains(&parent);
        // With a rebuild, a pushed filter must keep or drop whole traces: it names trace_id and
        // nothing else (a filter naming no column, e.g. on random(), would thin traces too).
        let trace_only = |e: &Expr| {
            let refs = e.column_refs();
            !refs.is_empty() && refs.iter().all(|c| c.name == col::TRACE_ID)
        };
        let pushed: Vec<Expr> = filters
            .iter()
            .filter(|e| !e.column_refs().iter().any(|c| c.name == col::PARENT_SPAN_ID))
            .filter(|e| !rebuild || trace_only(e))
            .cloned()
            .collect();
        let mut scanned = requested.clone();
        if rebuild {
            for helper in [col::TRACE_ID, col::SPAN_ID, col::PARENT_OFFSET] {
                let i = index(helper)?;
                if !scanned.contains(&i) {
                    scanned.push(i);
                }
            }
        }

        // Footers and page indexes come from the runtime's metadata cache once read.
        let store = state.runtime_env().object_store(BLOCKS_URL.clone())?;
        let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut source = ParquetSource::new(file_schema.clone())
            .with_parquet_file_reader_factory(Arc::new(PageIndexedReaderFactory(CachedParquetFileReaderFactory::new(
                store.clone(),
                metadata_cache,
            ))))
            .with_bloom_filter_on_read(true)
            .with_enable_page_index(true)
            .with_pushdown_filters(true);
        if let Some(predicate) = conjunction(pushed) {
            let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        // Map-attribute equalities prune row groups by the blocks' Bloom filters (whole row
        // groups: safe for the rebuild too).
        let map_filters = crate::prune::map_value_filters(filters);
        let mut files = Vec::with_capacity(blocks.len());
        for b in blocks {
            let mut file = PartitionedFile::new(b.path.clone(), b.bytes);
            if let Some(plan) = crate::prune::access_plan(store.clone(), b, &map_filters).await {
                if plan.row_group_index_iter().next().is_none() {
                    continue;
                }
                file = file.with_extension(plan);
            }
            files.push(file);
        }
        let partitions = state.config().target_partitions().max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions.min(files.len()).max(1)];
        for (i, f) in files.into_iter().enumerate() {
            let n = groups.len();
            groups[i % n].push(f);
        }
        let config = FileScanConfigBuilder::new(BLOCKS_URL.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(scanned))?
            .with_limit(limit)
            .build();
        let scan = DataSourceExec::from_data_source(config);
        if !rebuild {
            return Ok(scan);
        }
        Ok(Arc::new(ParentIdExec::try_new(scan, (0..requested.len()).collect())?))
    }

    /// The same spans without the blocks at `paths` (tag lookups answer those from footers).
    pub fn excluding(mut self, paths: std::collections::HashSet<String>) -> Self {
        self.excluded = Arc::new(paths);
        self
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters prune shards, blocks, row groups and rows, and are applied again above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let hints = ScanHints::from_filters(filters);
        let mut snapshot = self
            .source
            .load(&self.tenant, &hints, projection.cloned())
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        if !self.excluded.is_empty() {
            snapshot.blocks.retain(|b| !self.excluded.contains(&b.path));
        }
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !snapshot.blocks.is_empty() {
            inputs.push(self.scan_blocks(state, &snapshot.blocks, projection, filters, limit).await?);
        }

        if !snapshot.unflushed.is_empty() {
            let streams: Vec<Arc<dyn PartitionStream>> = snapshot
                .unflushed
                .into_iter()
                .map(|s| Arc::new(ShardPartition::new(projected.clone(), s)) as Arc<dyn PartitionStream>)
                .collect();
            inputs.push(Arc::new(StreamingTableExec::try_new(
                projected.clone(),
                streams,
                None,
                Vec::new(),
                false,
                limit,
            )?));
        }
        if inputs.is_empty() {
            inputs.push(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(inputs)
    }
}

/// One shard's unflushed spans as a partition: the stream its leader opened for this scan,
/// consumed once.
struct ShardPartition {
    schema: SchemaRef,
    stream: std::sync::Mutex<Option<UnflushedStream>>,
}

impl ShardPartition {
    fn new(schema: SchemaRef, stream: UnflushedStream) -> Self {
        Self { schema, stream: std::sync::Mutex::new(Some(stream)) }
    }
}

impl std::fmt::Debug for ShardPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardPartition")
    }
}

impl PartitionStream for ShardPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().unwrap_or_else(|e| e.into_inner()).take();
        let schema = self.schema.clone();
        let stream = match taken {
            Some(s) => s
                .map(move |b| {
                    let b = b.map_err(|e| {
                        datafusion::error::DataFusionError::External(Box::new(QueryError::Unavailable(e.to_string())))
                    })?;
                    // Batches that crossed the network carry an equal schema in a new allocation.
                    Ok(b.with_schema(schema.clone())?)
                })
                .boxed(),
            None => futures::stream::once(async {
                Err(datafusion::error::DataFusionError::Internal(
                    "a shard's unflushed spans can be read once per scan".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
