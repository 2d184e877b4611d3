//! `codecbench`: what encoding one export's spans for the storage nodes costs, per span, with
//! each candidate wire format (realistic `loadsim` spans, 500 per export, cut into 8 shards):
//! `cargo run --release -p spindle-loadtest --bin codecbench` (`-- block`: only the Parquet
//! block a leader's flush writes).

use std::time::Instant;

use arrow::record_batch::RecordBatch;
use spindle_loadtest::traffic::Traffic;

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut last = f();
    let start = Instant::now();
    for _ in 0..rounds {
        last = f();
    }
    (start.elapsed().as_secs_f64() / rounds as f64, last)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("block") {
        // Only the flush (for profiling it).
        block_encode();
        return;
    }
    let mut traffic = Traffic::new(200, 1, 0.01);
    let requests: Vec<_> = (0..20).map(|_| traffic.request(500)).collect();
    let spans_in: usize =
        requests.iter().flat_map(|r| r.iter()).flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    let per = |secs: f64| secs * 1e6 / spans_in as f64;
    let slot = |id: &[u8]| id[15] as usize % 8;
    let (t, _) = time(10, || {
        requests
            .iter()
            .map(|r| spindle_otlp::to_arrow::resource_spans_to_batches(r, usize::MAX, false, 1, |_| 0).unwrap())
            .collect::<Vec<_>>()
    });
    println!("convert into one batch:      {:.2} us/span", per(t));
    let (t, _) = time(10, || {
        requests
            .iter()
            .map(|r| {
                let b = spindle_otlp::to_arrow::resource_spans_to_batch(r).unwrap().batch;
                let ids = b.column(0).as_any().downcast_ref::<arrow::array::FixedSizeBinaryArray>().unwrap().clone();
                (0..8)
                    .map(|k| {
                        let idx: arrow::array::UInt32Array =
                            (0..b.num_rows()).filter(|&i| slot(ids.value(i)) == k).map(|i| i as u32).collect();
                        arrow::compute::take_record_batch(&b, &idx).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    println!("convert, then take 8 ways:   {:.2} us/span", per(t));
    let (t, _) = time(10, || {
        requests
            .iter()
            .map(|r| spindle_otlp::to_arrow::resource_spans_to_batches(r, usize::MAX, false, 8, slot).unwrap())
            .collect::<Vec<_>>()
    });
    println!("convert into 8 batches:      {:.2} us/span", per(t));
    let schema = spindle_schema::span_schema();
    let (t, _) = time(1000, || {
        let mut out = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    });
    println!("ipc schema message alone:    {:.1} us per stream", t * 1e6);

    let batches: Vec<RecordBatch> = (0..20)
        .map(|_| spindle_otlp::to_arrow::resource_spans_to_batch(&traffic.request(500)).unwrap().batch)
        .collect();
    let spans: usize = batches.iter().map(|b| b.num_rows()).sum();
    let parts: Vec<RecordBatch> = batches
        .iter()
        .flat_map(|b| {
            let n = b.num_rows();
            (0..8).map(move |i| b.slice(i * n / 8, (i + 1) * n / 8 - i * n / 8))
        })
        .collect();
    let rounds = 20;
    let us = |secs: f64| secs * 1e6 / spans as f64;
    let per_buffer = |ps: &[RecordBatch]| {
        ps.iter()
            .map(|p| {
                let options = arrow::ipc::writer::IpcWriteOptions::default()
                    .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
                    .unwrap();
                let mut out = Vec::new();
                let mut w =
                    arrow::ipc::writer::StreamWriter::try_new_with_options(&mut out, p.schema_ref(), options).unwrap();
                w.write(p).unwrap();
                w.finish().unwrap();
                drop(w);
                out
            })
            .collect::<Vec<_>>()
    };
    let plain = |ps: &[RecordBatch]| {
        ps.iter()
            .map(|p| {
                let mut out = Vec::new();
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, p.schema_ref()).unwrap();
                w.write(p).unwrap();
                w.finish().unwrap();
                drop(w);
                out
            })
            .collect::<Vec<_>>()
    };
    for (name, ps) in [("500-span batches", batches.clone()), ("8 slices each", parts.clone())] {
        let (t, enc) = time(rounds, || {
            ps.iter().map(|p| spindle_schema::ipc::encode(std::slice::from_ref(p)).unwrap()).collect::<Vec<_>>()
        });
        let (td, _) = time(rounds, || enc.iter().map(|e| spindle_schema::ipc::decode(e).unwrap()).collect::<Vec<_>>());
        println!("ipc::encode of {name}: encode {:.2} us/span, decode {:.2} us/span", us(t), us(td));
    }
    let (t, enc) = time(rounds, || per_buffer(&parts));
    let size: usize = enc.iter().map(|e| e.len()).sum();
    let (td, _) = time(rounds, || enc.iter().map(|e| spindle_schema::ipc::decode(e).unwrap()).collect::<Vec<_>>());
    println!(
        "per-buffer lz4 frame: encode {:.2} us/span, decode {:.2} us/span, {} B/span",
        us(t),
        us(td),
        size / spans
    );
    let (t, enc) = time(rounds, || plain(&parts));
    let size: usize = enc.iter().map(|e| e.len()).sum();
    let (td, _) = time(rounds, || enc.iter().map(|e| spindle_schema::ipc::decode(e).unwrap()).collect::<Vec<_>>());
    println!(
        "uncompressed ipc:     encode {:.2} us/span, decode {:.2} us/span, {} B/span",
        us(t),
        us(td),
        size / spans
    );
    let (t, enc) =
        time(rounds, || plain(&parts).iter().map(|p| lz4_flex::block::compress_prepend_size(p)).collect::<Vec<_>>());
    let size: usize = enc.iter().map(|e| e.len()).sum();
    let (td, _) = time(rounds, || {
        enc.iter()
            .map(|e| spindle_schema::ipc::decode(&lz4_flex::block::decompress_size_prepended(e).unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    println!(
        "ipc + one lz4 block:  encode {:.2} us/span, decode {:.2} us/span, {} B/span",
        us(t),
        us(td),
        size / spans
    );
    let (t, enc) = time(rounds, || {
        parts.iter().map(|p| spindle_schema::ipc::encode(std::slice::from_ref(p)).unwrap()).collect::<Vec<_>>()
    });
    let size: usize = enc.iter().map(|e| e.len()).sum();
    let (td, _) = time(rounds, || enc.iter().map(|e| spindle_schema::ipc::decode(e).unwrap()).collect::<Vec<_>>());
    println!(
        "spindle ipc::encode:  encode {:.2} us/span, decode {:.2} us/span, {} B/span",
        us(t),
        us(td),
        size / spans
    );
    let mut cc = zstd::bulk::Compressor::new(1).unwrap();
    let (t, enc) = time(rounds, || plain(&parts).iter().map(|p| cc.compress(p).unwrap()).collect::<Vec<_>>());
    let size: usize = enc.iter().map(|e| e.len()).sum();
    let mut dc = zstd::bulk::Decompressor::new().unwrap();
    let (td, _) = time(rounds, || {
        enc.iter()
            .map(|e| spindle_schema::ipc::decode(&dc.decompress(e, 64 << 20).unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    println!(
        "ipc + zstd-1 (reused): encode {:.2} us/span, decode {:.2} us/span, {} B/span",
        us(t),
        us(td),
        size / spans
    );
    block_encode();
}

/// What a storage leader's flush costs: 50,000 realistic spans sorted and written as one
/// Parquet block with the default block options.
fn block_encode() {
    let mut traffic = Traffic::new(200, 1, 0.01);
    let batches: Vec<RecordBatch> = (0..100)
        .map(|_| {
            let request = traffic.request(500);
            spindle_otlp::to_arrow::resource_spans_to_batches(&request, usize::MAX, false, 1, |_| 0)
                .unwrap()
                .batches
                .remove(0)
                .batch
        })
        .collect();
    let spans: usize = batches.iter().map(|b| b.num_rows()).sum();
    let options = spindle_storage::BlockOptions::default();
    let (t, block) = time(3, || spindle_storage::block::encode_block(&batches, &options).unwrap().unwrap());
    println!(
        "parquet block of {spans} spans: encode {:.2} us/span, {} B/span",
        t * 1e6 / spans as f64,
        block.parquet.len() / spans
    );
}
