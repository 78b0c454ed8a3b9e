//! Runs one benchmark loop many times with no harness around it, for a profiler:
//!
//! ```sh
//! cargo build --release --example profile
//! perf record -g target/release/examples/profile decode ours deliver 200000
//! valgrind --tool=callgrind target/release/examples/profile decode ours publish 2000
//! ```
//!
//! Arguments: `decode` or `encode`, `ours` or `amq-protocol`, a workload (`publish`,
//! `deliver`, `ack`, `start_ok`, `mix`), and how many times to go over its buffer.

use std::process::ExitCode;

use amqp_bench::{check_same_frames, workloads, Codec, Operation, Runner};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [operation, codec, name, iterations] = &args[..] else {
        eprintln!("usage: profile decode|encode ours|amq-protocol WORKLOAD ITERATIONS");
        return ExitCode::FAILURE;
    };
    let operation = match operation.as_str() {
        "decode" => Operation::Decode,
        "encode" => Operation::Encode,
        other => {
            eprintln!("unknown operation {other:?}: decode or encode");
            return ExitCode::FAILURE;
        }
    };
    let codec = match codec.as_str() {
        "ours" => Codec::Ours,
        "amq-protocol" => Codec::AmqProtocol,
        other => {
            eprintln!("unknown codec {other:?}: ours or amq-protocol");
            return ExitCode::FAILURE;
        }
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("ITERATIONS must be a number, not {iterations:?}");
        return ExitCode::FAILURE;
    };
    let Some(workload) = workloads().into_iter().find(|w| w.name == name) else {
        eprintln!("no workload {name:?}: publish, deliver, ack, start_ok or mix");
        return ExitCode::FAILURE;
    };
    check_same_frames(&workload);
    let mut runner = Runner::new(&workload);
    let mut frames = 0u64;
    for _ in 0..iterations {
        frames += runner.run(operation, codec) as u64;
    }
    println!("{operation:?} {codec:?} {name}: {frames} frames");
    ExitCode::SUCCESS
}
