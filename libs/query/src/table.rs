//! The `spans` table: Parquet blocks plus unflushed data, as one DataFusion table.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use spindle_schema::span_schema;
use spindle_storage::TenantId;

use crate::hints::ScanHints;
use crate::source::SpanSource;

/// URL under which the block object store is registered with DataFusion.
pub static BLOCKS_URL: LazyLock<ObjectStoreUrl> =
    LazyLock::new(|| ObjectStoreUrl::parse("spindle://blocks").unwrap_or_else(|_| ObjectStoreUrl::local_filesystem()));

/// One tenant's spans.
#[derive(Clone)]
pub struct SpansTable {
    tenant: TenantId,
    source: Arc<SpanSource>,
    schema: SchemaRef,
}

impl std::fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpansTable").field("tenant", &self.tenant).finish()
    }
}

impl SpansTable {
    /// The spans of `tenant`, read through `source`.
    pub fn new(tenant: TenantId, source: Arc<SpanSource>) -> Self {
        Self { tenant, source, schema: span_schema() }
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
        let snapshot = self
            .source
            .load(&self.tenant, &hints)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let partitions = state.config().target_partitions().max(1);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !snapshot.blocks.is_empty() {
            let mut source = ParquetSource::new(self.schema.clone())
                .with_bloom_filter_on_read(true)
                .with_enable_page_index(true)
                .with_pushdown_filters(true);
            if let Some(predicate) = conjunction(filters.to_vec()) {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
            }
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions.min(snapshot.blocks.len())];
            for (i, b) in snapshot.blocks.iter().enumerate() {
                let n = groups.len();
                groups[i % n].push(PartitionedFile::new(b.path.clone(), b.bytes));
            }
            let config = FileScanConfigBuilder::new(BLOCKS_URL.clone(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }

        let mut memory: Vec<Vec<_>> = vec![Vec::new(); partitions];
        for (i, b) in snapshot.batches.into_iter().enumerate() {
            memory[i % partitions].push(b);
        }
        memory.retain(|p| !p.is_empty());
        if !memory.is_empty() || inputs.is_empty() {
            if memory.is_empty() {
                memory.push(Vec::new());
            }
            inputs.push(MemorySourceConfig::try_new_exec(&memory, self.schema.clone(), projection.cloned())?);
        }
        UnionExec::try_new(inputs)
    }
}
