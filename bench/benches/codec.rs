//! Criterion wiring of the workloads in `src/lib.rs`: groups `decode` and `encode`, ours and
//! amq-protocol side by side on each workload. See README.md for how to run it.

use std::hint::black_box;
use std::time::Duration;

use amqp_bench::{
    check_same_frames, decode_theirs, encode_ours, encode_theirs, refill_and_decode_ours,
    workloads, FRAME_MAX,
};
use amqp_codec::Limits;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_decode(c: &mut Criterion) {
    let workloads = workloads();
    for workload in &workloads {
        check_same_frames(workload);
    }
    let limits = Limits::with_frame_max(FRAME_MAX);
    let mut group = c.benchmark_group("decode");
    for workload in &workloads {
        let frames = workload.ours.len();
        group.throughput(Throughput::Elements(frames as u64));
        let mut buf = BytesMut::with_capacity(workload.wire.len());
        group.bench_function(format!("ours/{}", workload.name), |b| {
            b.iter(|| {
                let count = refill_and_decode_ours(&mut buf, &workload.wire, &limits);
                debug_assert_eq!(count, frames);
                count
            })
        });
        // Not a contender: the refill alone, the part of ours' time a socket read would
        // spend anyway.
        group.bench_function(format!("refill_only/{}", workload.name), |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&workload.wire);
                black_box(&mut buf).len()
            })
        });
        group.bench_function(format!("amq-protocol/{}", workload.name), |b| {
            b.iter(|| {
                let count = decode_theirs(black_box(&workload.wire[..]));
                debug_assert_eq!(count, frames);
                count
            })
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let workloads = workloads();
    let mut group = c.benchmark_group("encode");
    for workload in &workloads {
        group.throughput(Throughput::Elements(workload.ours.len() as u64));
        let mut buf = BytesMut::with_capacity(workload.wire.len());
        group.bench_function(format!("ours/{}", workload.name), |b| {
            b.iter(|| {
                buf.clear();
                encode_ours(black_box(&workload.ours), &mut buf);
                buf.len()
            })
        });
        let mut vec = Vec::with_capacity(workload.wire.len());
        group.bench_function(format!("amq-protocol/{}", workload.name), |b| {
            b.iter(|| {
                vec.clear();
                vec = encode_theirs(black_box(&workload.theirs), std::mem::take(&mut vec));
                vec.len()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_decode, bench_encode
}
criterion_main!(benches);
