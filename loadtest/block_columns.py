#!/usr/bin/env python3
"""Where a block's bytes go: re-encodes the Parquet blocks under a directory with pyarrow (256k-row
row groups, dictionaries, zstd) and prints bytes per span per column and per zstd level.
  python loadtest/block_columns.py <blocks dir>      (needs `pip install pyarrow`)"""

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


def main():
    files = glob.glob(os.path.join(sys.argv[1], "**", "*.parquet"), recursive=True)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    n = table.num_rows
    print(f"{n} spans, as written by Spindle: {sum(os.path.getsize(f) for f in files) / n:.1f} B/span")
    md = pq.ParquetFile(io.BytesIO(encode(table, 3))).metadata
    sizes = {}
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(rg).column(c)
            name = col.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + col.total_compressed_size
    for name, size in sorted(sizes.items(), key=lambda x: -x[1])[:12]:
        print(f"  {name}: {size / n:.1f} B/span")
    for level in (3, 6, 9, 12, 15):
        print(f"zstd {level}: {len(encode(table, level)) / n:.1f} B/span")


if __name__ == "__main__":
    main()
