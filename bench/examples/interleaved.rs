//! The same comparison as `cargo bench`, made robust to a busy machine: ours and amq-protocol
//! take turns in short slices (which one goes first alternates), so a load that comes and goes
//! hits both alike, and the figure reported is the median of the per-round ratios. For decoding
//! it also times the refill of our read buffer alone, and gives the ratio without it
//! (`excl. refill`): amq-protocol parses the prebuilt bytes in place, ours first copies them
//! into a `BytesMut` as a socket read would.
//!
//! ```sh
//! cargo run --release --example interleaved            # 40 rounds of 25 ms per contender
//! cargo run --release --example interleaved -- 100 10  # 100 rounds of 10 ms
//! ```

use std::time::{Duration, Instant};

use amqp_bench::{check_same_frames, workloads, Codec, Operation, Runner};

/// What one slice of a round times.
#[derive(Clone, Copy)]
enum Contender {
    Run(Codec),
    RefillOnly,
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(40) as usize;
    let slice = Duration::from_millis(args.get(1).copied().unwrap_or(25));
    let workloads = workloads();
    for workload in &workloads {
        check_same_frames(workload);
    }
    println!("{rounds} rounds of {slice:?} per contender; medians; Mframes/s");
    println!(
        "{:<7} {:<9} {:>8} {:>13} {:>12} {:>14}",
        "group", "workload", "ours", "amq-protocol", "ours/theirs", "excl. refill"
    );
    for operation in [Operation::Decode, Operation::Encode] {
        let mut contenders = vec![
            Contender::Run(Codec::Ours),
            Contender::Run(Codec::AmqProtocol),
        ];
        if operation == Operation::Decode {
            contenders.push(Contender::RefillOnly);
        }
        for workload in &workloads {
            let mut runner = Runner::new(workload);
            // Warm caches, branch predictors and the read buffer's shared storage.
            for &contender in &contenders {
                rate(&mut runner, operation, contender, slice);
            }
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            let (mut ratios, mut ratios_without_refill) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let mut rates = [0.0f64; 3];
                for step in 0..contenders.len() {
                    let index = (round + step) % contenders.len();
                    rates[index] = rate(&mut runner, operation, contenders[index], slice);
                }
                let [a, b, refill] = rates;
                ours.push(a);
                theirs.push(b);
                ratios.push(a / b);
                if refill > a {
                    // Time per frame less the refill's time per frame.
                    ratios_without_refill.push(1.0 / (1.0 / a - 1.0 / refill) / b);
                }
            }
            let without_refill = if ratios_without_refill.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}x", median(&mut ratios_without_refill))
            };
            println!(
                "{:<7} {:<9} {:>8.2} {:>13.2} {:>11.2}x {:>14}",
                format!("{operation:?}").to_lowercase(),
                workload.name,
                median(&mut ours),
                median(&mut theirs),
                median(&mut ratios),
                without_refill
            );
        }
    }
}

/// Frames per second, in millions, over one slice of `slice`.
fn rate(
    runner: &mut Runner<'_>,
    operation: Operation,
    contender: Contender,
    slice: Duration,
) -> f64 {
    let start = Instant::now();
    let mut frames = 0usize;
    while start.elapsed() < slice {
        frames += match contender {
            Contender::Run(codec) => runner.run(operation, codec),
            Contender::RefillOnly => runner.refill_only(),
        };
    }
    frames as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
