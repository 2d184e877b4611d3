//! How the `spans` table opens blocks: through DataFusion's metadata cache, always with the page
//! indexes. DataFusion's Parquet opener asks for the footer alone and then loads the page index
//! on the side without caching it, so every trace-by-id lookup re-parsed the page indexes of the
//! blocks it opened; asking for them up front makes the cache keep them.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{CachedParquetFileReaderFactory, ParquetFileReaderFactory};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::FutureExt;

/// Opens blocks with [`CachedParquetFileReaderFactory`], requesting page indexes with the footer.
#[derive(Debug)]
pub struct PageIndexedReaderFactory(pub CachedParquetFileReaderFactory);

impl ParquetFileReaderFactory for PageIndexedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        let inner = self.0.create_reader(partition_index, partitioned_file, metadata_size_hint, metrics)?;
        Ok(Box::new(PageIndexedReader(inner)))
    }
}

impl PageIndexedReaderFactory {
    /// A reader of one block outside a DataFusion scan (the trace point read).
    pub fn open(&self, file: PartitionedFile) -> datafusion::error::Result<PageIndexedReader> {
        let inner = self.0.create_reader(0, file, None, &ExecutionPlanMetricsSet::new())?;
        Ok(PageIndexedReader(inner))
    }
}

/// A block reader whose footer comes with the page indexes (and from the metadata cache).
pub struct PageIndexedReader(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for PageIndexedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let options = options.cloned().unwrap_or_default().with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}
