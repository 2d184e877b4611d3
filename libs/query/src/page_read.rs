//! Reading a few rows of a block's row group: only the pages that hold them, decompressed with
//! one zstd context per thread.
//!
//! The Parquet crate's readers build a zstd compressor and decompressor for every column chunk
//! they open. Each runs `cpuid` several times, which a virtual machine traps: on the 2-vCPU VM
//! the benchmarks ran on that cost about 25 µs per column chunk, more than decoding the few pages
//! a point read needs. Here the column chunks are handed to the Parquet page reader as if
//! uncompressed, and each page it yields is inflated with this thread's zstd context.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::Fields;
use bytes::Bytes;
use datafusion::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, RowGroups, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{parquet_to_arrow_field_levels, ProjectionMask};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use datafusion::parquet::errors::{ParquetError, Result};
use datafusion::parquet::file::metadata::{ParquetMetaData, RowGroupMetaData};
use datafusion::parquet::file::page_index::offset_index::PageLocation;
use datafusion::parquet::file::reader::{ChunkReader, Length};
use datafusion::parquet::file::serialized_reader::SerializedPageReader;

/// Largest decompressed page accepted (the writer's pages are a few hundred KiB at most).
const MAX_PAGE_BYTES: usize = 256 << 20;

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The rows `rows` (ordered, disjoint ranges within row group `row_group`) of the leaf columns
/// in `mask`, read through `reader` from the block `metadata` describes, batch by batch. `fields`
/// is the block's whole Arrow schema (it gives the Arrow types of the columns).
pub async fn read_rows(
    reader: &mut (dyn AsyncFileReader + Send),
    metadata: &ParquetMetaData,
    fields: &Fields,
    row_group: usize,
    rows: &[Range<usize>],
    mask: ProjectionMask,
) -> Result<ParquetRecordBatchReader> {
    let group = metadata.row_group(row_group);
    let group_rows = usize::try_from(group.num_rows())?;
    let ordered = rows.windows(2).all(|w| w[0].end <= w[1].start) && rows.iter().all(|r| r.start <= r.end);
    if !ordered || rows.last().is_some_and(|r| r.end > group_rows) {
        return Err(ParquetError::General(format!("rows {rows:?} are not ordered ranges within {group_rows} rows")));
    }
    let selection = RowSelection::from_consecutive_ranges(rows.iter().cloned(), group_rows);
    // Parquet may read a sparse selection as a mask over every row from the first selected to
    // the last, so the pages in between are fetched too.
    let covering = match (rows.first(), rows.last()) {
        (Some(first), Some(last)) if rows.len() > 1 => {
            RowSelection::from_consecutive_ranges(std::iter::once(first.start..last.end), group_rows)
        }
        _ => selection.clone(),
    };
    let leaves: Vec<usize> = (0..group.num_columns()).filter(|&i| mask.leaf_included(i)).collect();
    let mut ranges = Vec::new();
    let mut columns = Vec::with_capacity(leaves.len());
    for &leaf in &leaves {
        let (start, len) = group.column(leaf).byte_range();
        let first = ranges.len();
        let locations = page_locations(metadata, row_group, leaf);
        match locations {
            Some(locations) => {
                if let Some(first_page) = locations.first().filter(|p| p.offset as u64 != start) {
                    ranges.push(start..first_page.offset as u64);
                }
                ranges.extend(covering.scan_ranges(locations));
            }
            None => ranges.push(start..start.saturating_add(len)),
        }
        columns.push((leaf, first..ranges.len(), locations.map(<[PageLocation]>::to_vec)));
    }
    let offsets: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    let fetched = reader.get_byte_ranges(ranges).await?;
    if fetched.len() != offsets.len() {
        return Err(ParquetError::General("the store returned fewer ranges than asked for".into()));
    }
    let mut chunks: Vec<Option<Arc<FetchedChunk>>> = vec![None; group.num_columns()];
    for (leaf, parts, locations) in columns {
        let pieces = offsets[parts.clone()].iter().copied().zip(fetched[parts].iter().cloned()).collect();
        let len = group.column(leaf).byte_range().1;
        chunks[leaf] = Some(Arc::new(FetchedChunk { len, pieces, locations }));
    }
    let levels = parquet_to_arrow_field_levels(metadata.file_metadata().schema_descr(), mask, Some(fields))?;
    let fetched = FetchedRowGroup { metadata, row_group, rows: group_rows, chunks };
    ParquetRecordBatchReader::try_new_with_row_groups(&levels, &fetched, 8192, Some(selection))
}

/// The page locations of column `leaf` in `row_group` when the offset index has them and they
/// are consistent (the first page at row 0, rows increasing, pages non-empty, in order and inside
/// the column chunk); otherwise `None`, and the column chunk is read whole.
pub(crate) fn page_locations(metadata: &ParquetMetaData, row_group: usize, leaf: usize) -> Option<&[PageLocation]> {
    let group = metadata.row_group(row_group);
    let locations = metadata.offset_index()?.get(row_group)?.get(leaf)?.page_locations();
    let (start, len) = group.column(leaf).byte_range();
    let end = start.checked_add(len)?;
    let rows = u64::try_from(group.num_rows()).ok()?;
    let (mut next_offset, mut next_row) = (start, 0);
    for (i, page) in locations.iter().enumerate() {
        let offset = u64::try_from(page.offset).ok()?;
        let size = u64::try_from(page.compressed_page_size).ok().filter(|&s| s > 0)?;
        let row = u64::try_from(page.first_row_index).ok()?;
        let row_ok = if i == 0 { row == 0 } else { row >= next_row };
        if !row_ok || row >= rows || offset < next_offset || offset.checked_add(size)? > end {
            return None;
        }
        (next_offset, next_row) = (offset + size, row + 1);
    }
    (!locations.is_empty()).then_some(locations)
}

/// The parts of one column chunk that were fetched, (file offset, bytes) by offset, and the
/// page locations they were chosen by (`None`: the whole chunk is one part).
struct FetchedChunk {
    len: u64,
    pieces: Vec<(u64, Bytes)>,
    locations: Option<Vec<PageLocation>>,
}

impl FetchedChunk {
    /// The fetched bytes from file offset `start` to the end of the part holding it.
    fn at(&self, start: u64) -> Result<Bytes> {
        let i = self.pieces.partition_point(|(offset, _)| *offset <= start);
        let (offset, bytes) = i
            .checked_sub(1)
            .map(|i| &self.pieces[i])
            .filter(|(offset, bytes)| start < offset + bytes.len() as u64)
            .ok_or_else(|| ParquetError::General(format!("the page at offset {start} was not fetched")))?;
        Ok(bytes.slice((start - offset) as usize..))
    }
}

impl Length for FetchedChunk {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for FetchedChunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T> {
        Ok(bytes::Buf::reader(self.at(start)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let piece = self.at(start)?;
        if length > piece.len() {
            return Err(ParquetError::General(format!("the page at offset {start} is shorter than {length} bytes")));
        }
        Ok(piece.slice(..length))
    }
}

/// One row group whose needed pages are in memory.
struct FetchedRowGroup<'a> {
    metadata: &'a ParquetMetaData,
    row_group: usize,
    rows: usize,
    chunks: Vec<Option<Arc<FetchedChunk>>>,
}

impl RowGroups for FetchedRowGroup<'_> {
    fn num_rows(&self) -> usize {
        self.rows
    }

    fn column_chunks(&self, i: usize) -> Result<Box<dyn PageIterator>> {
        let chunk = self
            .chunks
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| ParquetError::General(format!("column {i} was not fetched")))?;
        let column = self.metadata.row_group(self.row_group).column(i);
        let locations = chunk.locations.clone();
        let pages: Box<dyn PageReader> = if matches!(column.compression(), Compression::ZSTD(_)) {
            let plain = column.clone().into_builder().set_compression(Compression::UNCOMPRESSED).build()?;
            Box::new(ZstdPages(SerializedPageReader::new(chunk, &plain, self.rows, locations)?))
        } else {
            Box::new(SerializedPageReader::new(chunk, column, self.rows, locations)?)
        };
        Ok(Box::new(OneChunk(Some(pages))))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(std::iter::once(self.metadata.row_group(self.row_group)))
    }

    fn metadata(&self) -> &ParquetMetaData {
        self.metadata
    }
}

/// The page readers of a row group collection of one row group.
struct OneChunk(Option<Box<dyn PageReader>>);

impl Iterator for OneChunk {
    type Item = Result<Box<dyn PageReader>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.take().map(Ok)
    }
}

impl PageIterator for OneChunk {}

/// The pages of a zstd column chunk read as if uncompressed, inflated here.
struct ZstdPages<P>(P);

impl<P: PageReader> Iterator for ZstdPages<P> {
    type Item = Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl<P: PageReader> PageReader for ZstdPages<P> {
    fn get_next_page(&mut self) -> Result<Option<Page>> {
        self.0.get_next_page()?.map(inflate_page).transpose()
    }

    fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
        self.0.peek_next_page()
    }

    fn skip_next_page(&mut self) -> Result<()> {
        self.0.skip_next_page()
    }

    fn at_record_boundary(&mut self) -> Result<bool> {
        self.0.at_record_boundary()
    }
}

/// `page` with its values inflated (a v2 page's levels are stored uncompressed before them).
fn inflate_page(mut page: Page) -> Result<Page> {
    match &mut page {
        Page::DataPage { buf, .. } | Page::DictionaryPage { buf, .. } => *buf = inflate(buf)?,
        Page::DataPageV2 { buf, def_levels_byte_len, rep_levels_byte_len, is_compressed, .. } => {
            let levels = (*def_levels_byte_len as usize).saturating_add(*rep_levels_byte_len as usize);
            if levels > buf.len() {
                return Err(ParquetError::General("a v2 data page's levels are longer than the page".into()));
            }
            if *is_compressed && levels < buf.len() {
                let mut out = buf[..levels].to_vec();
                out.extend_from_slice(&inflate(&buf[levels..])?);
                *buf = Bytes::from(out);
            }
            *is_compressed = false;
        }
    }
    Ok(page)
}

/// A zstd page, inflated with this thread's context when its frame says its size, streamed
/// otherwise (no size, or several frames).
fn inflate(compressed: &[u8]) -> Result<Bytes> {
    if compressed.is_empty() {
        return Ok(Bytes::new());
    }
    let size = zstd::zstd_safe::get_frame_content_size(compressed)
        .map_err(|_| ParquetError::General("a page is not a zstd frame".into()))?;
    if let Some(size) = size.and_then(|s| usize::try_from(s).ok()) {
        if size > MAX_PAGE_BYTES {
            return Err(ParquetError::General(format!("a page inflates to {size} bytes, more than {MAX_PAGE_BYTES}")));
        }
        let inflated = ZSTD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let decompressor = match cell.as_mut() {
                Some(d) => d,
                None => cell.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress(compressed, size)
        });
        if let Ok(out) = inflated {
            return Ok(Bytes::from(out));
        }
    }
    let mut out = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(compressed)?;
    std::io::copy(&mut std::io::Read::take(decoder, MAX_PAGE_BYTES as u64 + 1), &mut out)?;
    match out.len() > MAX_PAGE_BYTES {
        true => Err(ParquetError::General(format!("a page inflates to more than {MAX_PAGE_BYTES} bytes"))),
        false => Ok(Bytes::from(out)),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder};
    use arrow::compute::concat_batches;
    use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::ZstdLevel;
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

    use super::*;

    /// 5,000 rows in one row group of 100-row pages: an id, a dictionary-encoded nullable name
    /// and a list of strings (records of 0-3 values), zstd.
    fn file(version: WriterVersion) -> (Vec<u8>, RecordBatch) {
        let ids = Int64Array::from_iter_values(0..5000);
        let names: StringArray = (0..5000).map(|i| (i % 7 != 0).then(|| format!("name-{}", i % 13))).collect();
        let mut tags = ListBuilder::new(StringBuilder::new());
        for i in 0..5000 {
            for j in 0..i % 4 {
                tags.values().append_value(format!("tag-{i}-{j}"));
            }
            tags.append(true);
        }
        let columns: Vec<(&str, ArrayRef)> =
            vec![("id", Arc::new(ids)), ("name", Arc::new(names)), ("tags", Arc::new(tags.finish()))];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let props = WriterProperties::builder()
            .set_writer_version(version)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(50)
            .set_max_row_group_row_count(Some(1_000_000))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        (out, batch)
    }

    #[tokio::test]
    async fn selected_rows_read_as_written() {
        let cases = [
            (WriterVersion::PARQUET_1_0, true),
            (WriterVersion::PARQUET_2_0, true),
            (WriterVersion::PARQUET_1_0, false),
        ];
        for (version, page_index) in cases {
            let (bytes, written) = file(version);
            let mut reader = std::io::Cursor::new(bytes);
            let options = match page_index {
                true => ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required),
                false => ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip),
            };
            let meta = ArrowReaderMetadata::load_async(&mut reader, options).await.unwrap();
            assert_eq!(page_locations(meta.metadata(), 0, 2).is_some(), page_index);
            // Inside one page, across a page boundary, the end of the last page: short runs with
            // gaps, which Parquet may read as a mask over everything between them.
            // Many one-row runs, then two whole pages skipped: the runs are short enough for
            // Parquet to read rows 0..601 as one masked run, pages 400..600 included.
            let mut sparse: Vec<Range<usize>> = (0..200).map(|i| 2 * i..2 * i + 1).collect();
            sparse.push(600..601);
            let (first, last) = (std::iter::once(0..1).collect(), std::iter::once(4999..5000).collect());
            for rows in [vec![120..135, 990..1010, 4990..5000], sparse, first, last, Vec::new()] {
                let got =
                    read_rows(&mut reader, meta.metadata(), meta.schema().fields(), 0, &rows, ProjectionMask::all())
                        .await
                        .unwrap()
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .unwrap();
                let want: Vec<RecordBatch> = rows.iter().map(|r| written.slice(r.start, r.len())).collect();
                let got = concat_batches(&written.schema(), &got).unwrap();
                assert_eq!(got, concat_batches(&written.schema(), &want).unwrap(), "{version:?} {page_index} {rows:?}");
            }
            let unordered = [990..1010, 120..135];
            let all = ProjectionMask::all();
            assert!(read_rows(&mut reader, meta.metadata(), meta.schema().fields(), 0, &unordered, all).await.is_err());
        }
    }

    #[test]
    fn frames_with_and_without_a_size_inflate() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let sized = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(inflate(&sized).unwrap(), data);
        let mut streamed = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut streamed, &data).unwrap();
        let streamed = streamed.finish().unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(), None);
        assert_eq!(inflate(&streamed).unwrap(), data);
        assert!(inflate(b"not zstd").is_err());
        assert!(inflate(&[]).unwrap().is_empty());
    }
}
