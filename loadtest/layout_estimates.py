#!/usr/bin/env python3
"""What block layout changes would save: re-encodes the Spindle span blocks in a directory with
pyarrow (zstd 3, 256k-row row groups) as they are, then with one change at a time, and prints
bytes per span of the whole file (estimates for issue 8; pyarrow's encoding is about 2 B/span
bigger than Spindle's, so compare the differences).
  python loadtest/layout_estimates.py <dir of span block .parquet files>   (needs pyarrow, numpy)"""
import glob, io, sys
import numpy as np
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq

files = glob.glob(sys.argv[1] + "/*.parquet")
t = pa.concat_tables([pq.read_table(f) for f in files])
n = t.num_rows

def size(table):
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3, row_group_size=256 * 1024, use_dictionary=True)
    md = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    cols = {}
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(rg).column(c)
            cols[col.path_in_schema.split(".")[0]] = cols.get(col.path_in_schema.split(".")[0], 0) + col.total_compressed_size
    return len(buf.getvalue()) / n, {k: v / n for k, v in cols.items()}

base, base_cols = size(t)
print(f"baseline (sorted by trace, start): {base:.2f} B/span")

trace = t.column("trace_id").to_numpy(zero_copy_only=False)
tid = np.array([bytes(x) for x in trace])
span = np.array([bytes(x) for x in t.column("span_id").to_pylist()])
parent = t.column("parent_span_id").to_pylist()
# Row offset of the parent within the same trace (0 when none / not found).
first = {}
pos = {}
for i, (tr, s) in enumerate(zip(tid, span)):
    first.setdefault(tr, i)
    pos[(tr, s)] = i
offset = np.zeros(n, dtype=np.int32)
found = 0
for i, (tr, p) in enumerate(zip(tid, parent)):
    if p is not None and (tr, bytes(p)) in pos:
        offset[i] = i - pos[(tr, bytes(p))]
        found += 1
print(f"parents found in the block: {found / n:.3f} of spans")
missing = [p if (p is None or (tid[i], bytes(p)) not in pos) else None for i, p in enumerate(parent)]
t1 = t.drop_columns(["parent_span_id"]).append_column("parent_offset", pa.array(offset)).append_column(
    "parent_span_id", pa.array(missing, type=t.schema.field("parent_span_id").type))
s1, c1 = size(t1)
print(f"1. parent as row offset within the trace (+ id where not found): {s1:.2f} (parent {base_cols['parent_span_id']:.2f} -> {c1['parent_offset'] + c1['parent_span_id']:.2f})")

res_cols = [c for c in t.column_names if c.startswith("resource_") or c == "service_name"]
res_cols = [c for c in res_cols if pa.types.is_string(t.schema.field(c).type) or pa.types.is_dictionary(t.schema.field(c).type)]
keys = pc.binary_join_element_wise(*[pc.fill_null(pc.cast(t.column(c), pa.string()), "") for c in res_cols], "\x1f")
ids = pc.dictionary_encode(keys).combine_chunks().indices
t2 = t.drop_columns(res_cols).append_column("resource_id", ids)
s2, c2 = size(t2)
print(f"2. {len(res_cols)} resource string columns -> one resource id (side table not counted): {s2:.2f} "
      f"({sum(base_cols[c] for c in res_cols):.2f} -> {c2['resource_id']:.2f}); distinct resources {len(pc.unique(keys))}")

start = t.column("start_time").cast(pa.int64()).to_numpy()
first_start = {}
rel = np.zeros(n, dtype=np.int64)
for i, tr in enumerate(tid):
    first_start.setdefault(tr, start[i])
    rel[i] = start[i] - first_start[tr]
t3 = t.drop_columns(["start_time"]).append_column("start_rel", pa.array(rel))
s3, c3 = size(t3)
print(f"3. start_time relative to the trace's first span (trace start kept elsewhere): {s3:.2f} ({base_cols['start_time']:.2f} -> {c3['start_rel']:.2f})")

order = pc.sort_indices(t, sort_keys=[("trace_id", "ascending"), ("service_name", "ascending"), ("start_time", "ascending")])
s4, c4 = size(t.take(order))
print(f"4. sorted by trace, service, start: {s4:.2f}")
