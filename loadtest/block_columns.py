#!/usr/bin/env python3
"""Where a block's bytes go: bytes per span per column as Spindle wrote the Parquet blocks under a
directory (from their footers), then re-encoded by pyarrow (256k-row row groups, dictionaries,
zstd) per column and per zstd level.
  python loadtest/block_columns.py <blocks dir> [--written]   (needs `pip install pyarrow`)"""

import glob
import io
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def encode(table, level):
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=level, row_group_size=256 * 1024,
                   use_dictionary=True)
    return buf.getvalue()


def column_sizes(metadatas, sizes=None):
    sizes = {} if sizes is None else sizes
    for md in metadatas:
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(rg).column(c)
                name = col.path_in_schema.split(".")[0]
                sizes[name] = sizes.get(name, 0) + col.total_compressed_size
    return sizes


def print_sizes(sizes, n):
    for name, size in sorted(sizes.items(), key=lambda x: -x[1])[:12]:
        print(f"  {name}: {size / n:.2f} B/span")


def main():
    files = glob.glob(os.path.join(sys.argv[1], "**", "*.parquet"), recursive=True)
    written = [pq.ParquetFile(f).metadata for f in files]
    n = sum(md.num_rows for md in written)
    print(f"{n} spans, as written by Spindle: {sum(os.path.getsize(f) for f in files) / n:.2f} B/span")
    print_sizes(column_sizes(written), n)
    if "--written" in sys.argv:
        return
    table = pa.concat_tables([pq.read_table(f) for f in files])
    print("re-encoded by pyarrow (zstd 3):")
    print_sizes(column_sizes([pq.ParquetFile(io.BytesIO(encode(table, 3))).metadata]), n)
    for level in (3, 6, 9, 12, 15):
        print(f"zstd {level}: {len(encode(table, level)) / n:.1f} B/span")


if __name__ == "__main__":
    main()
