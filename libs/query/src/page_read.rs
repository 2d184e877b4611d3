//! Reading a few rows of a block's row group: only the pages that hold them, decompressed with
//! one zstd context per thread.
//!
//! The Parquet crate's readers build a zstd compressor and decompressor for every column chunk
//! they open. Each runs `cpuid` several times, which a virtual machine traps: on the machines
//! Spindle runs on that cost about 25 µs per column chunk, more than decoding the few pages a
//! point read needs. Here the column chunks are handed to the Parquet page reader as if
//! uncompressed, and each page it yields is inflated with this thread's zstd context.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::Fields;
use arrow::record_batch::RecordBatch;
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

/// The rows `rows` (ranges within row group `row_group`) of the leaf columns in `mask`, read
/// through `reader` from the block `metadata` describes. `fields` is the block's whole Arrow
/// schema (it gives the Arrow types of the columns).
pub async fn read_rows(
    reader: &mut (dyn AsyncFileReader + Send),
    metadata: &Arc<ParquetMetaData>,
    fields: &Fields,
    row_group: usize,
    rows: &[Range<usize>],
    mask: ProjectionMask,
) -> Result<Vec<RecordBatch>> {
    let group = metadata.row_group(row_group);
    let group_rows = usize::try_from(group.num_rows())?;
    let selection = RowSelection::from_consecutive_ranges(rows.iter().cloned(), group_rows);
    let pages = metadata.offset_index().and_then(|o| o.get(row_group)).filter(|o| o.len() == group.num_columns());
    let leaves: Vec<usize> = (0..group.num_columns()).filter(|&i| mask.leaf_included(i)).collect();
    let mut ranges = Vec::new();
    let mut starts = Vec::with_capacity(leaves.len());
    for &leaf in &leaves {
        let (start, len) = group.column(leaf).byte_range();
        let first = ranges.len();
        match pages.map(|p| p[leaf].page_locations()) {
            Some(locations) if !locations.is_empty() => {
                if let Some(first_page) = locations.first().filter(|p| p.offset as u64 != start) {
                    ranges.push(start..first_page.offset as u64);
                }
                ranges.extend(selection.scan_ranges(locations));
            }
            _ => ranges.push(start..start + len),
        }
        starts.push(first..ranges.len());
    }
    let offsets: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    let fetched = reader.get_byte_ranges(ranges).await?;
    if fetched.len() != offsets.len() {
        return Err(ParquetError::General("the store returned fewer ranges than asked for".into()));
    }
    let mut chunks: Vec<Option<Arc<FetchedChunk>>> = vec![None; group.num_columns()];
    for (&leaf, parts) in leaves.iter().zip(starts) {
        let pieces = offsets[parts.clone()].iter().copied().zip(fetched[parts].iter().cloned()).collect();
        chunks[leaf] = Some(Arc::new(FetchedChunk { len: group.column(leaf).byte_range().1, pieces }));
    }
    let levels = parquet_to_arrow_field_levels(metadata.file_metadata().schema_descr(), mask, Some(fields))?;
    let fetched = FetchedRowGroup { metadata, row_group, rows: group_rows, chunks };
    let reader = ParquetRecordBatchReader::try_new_with_row_groups(&levels, &fetched, 8192, Some(selection))?;
    reader.collect::<std::result::Result<Vec<_>, _>>().map_err(ParquetError::from)
}

/// The parts of one column chunk that were fetched: (file offset, bytes), by offset.
struct FetchedChunk {
    len: u64,
    pieces: Vec<(u64, Bytes)>,
}

impl FetchedChunk {
    fn at(&self, start: u64) -> Result<Bytes> {
        let i = self
            .pieces
            .binary_search_by_key(&start, |(offset, _)| *offset)
            .map_err(|_| ParquetError::General(format!("page at offset {start} was not fetched")))?;
        Ok(self.pieces[i].1.clone())
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
            return Err(ParquetError::General(format!("page at offset {start} is shorter than {length} bytes")));
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
        let locations: Option<Vec<PageLocation>> = self
            .metadata
            .offset_index()
            .and_then(|o| o.get(self.row_group))
            .and_then(|o| o.get(i))
            .map(|o| o.page_locations().clone())
            .filter(|l| !l.is_empty());
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

fn inflate_page(page: Page) -> Result<Page> {
    Ok(match page {
        Page::DataPage { buf, num_values, encoding, def_level_encoding, rep_level_encoding, statistics } => {
            Page::DataPage {
                buf: inflate(&buf)?,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                statistics,
            }
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            num_nulls,
            num_rows,
            def_levels_byte_len,
            rep_levels_byte_len,
            is_compressed,
            statistics,
        } => {
            let levels = (def_levels_byte_len as usize).saturating_add(rep_levels_byte_len as usize);
            if levels > buf.len() {
                return Err(ParquetError::General("a v2 data page's levels are longer than the page".into()));
            }
            let buf = match is_compressed && levels < buf.len() {
                true => {
                    let mut out = buf[..levels].to_vec();
                    out.extend_from_slice(&inflate(&buf[levels..])?);
                    Bytes::from(out)
                }
                false => buf,
            };
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed: false,
                statistics,
            }
        }
        Page::DictionaryPage { buf, num_values, encoding, is_sorted } => {
            Page::DictionaryPage { buf: inflate(&buf)?, num_values, encoding, is_sorted }
        }
    })
}

/// One zstd frame, inflated with this thread's context.
fn inflate(compressed: &[u8]) -> Result<Bytes> {
    if compressed.is_empty() {
        return Ok(Bytes::new());
    }
    let size = zstd::zstd_safe::get_frame_content_size(compressed)
        .map_err(|_| ParquetError::General("a page is not a zstd frame".into()))?;
    let Some(size) = size.and_then(|s| usize::try_from(s).ok()) else {
        // No size in the frame header: stream it (other writers may leave it out).
        let mut out = Vec::new();
        let mut decoder = zstd::stream::read::Decoder::new(compressed).map_err(ParquetError::from)?;
        std::io::copy(&mut std::io::Read::take(&mut decoder, MAX_PAGE_BYTES as u64 + 1), &mut out)?;
        return match out.len() > MAX_PAGE_BYTES {
            true => Err(ParquetError::General(format!("a page inflates to more than {MAX_PAGE_BYTES} bytes"))),
            false => Ok(Bytes::from(out)),
        };
    };
    if size > MAX_PAGE_BYTES {
        return Err(ParquetError::General(format!("a page inflates to {size} bytes, more than {MAX_PAGE_BYTES}")));
    }
    ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        let out = decompressor.decompress(compressed, size)?;
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
