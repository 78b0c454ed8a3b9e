//! `amqp-perf`: measure an AMQP 0-9-1 broker.
//!
//! ```text
//! amqp-perf --uri amqp://guest:guest@127.0.0.1:5672/%2f -x 1 -y 1 -s 16 -z 10 -a
//! amqp-perf -x 1 -y 1 -C 1000000 -q 1000 -A 100          # manual acks, prefetch 1000
//! amqp-perf -x 1 -y 1 -z 10 -f persistent --durable -c 1000 --json
//! ```
//! Exit status: 0 when every message arrived exactly once, 1 when the run could not be done
//! (broker unreachable, a refused declare), 2 for bad flags, 3 when the check failed.

use clap::Parser;

use amqp_perf::Args;

fn main() {
    let args = Args::parse();
    if let Err(error) = args.validate() {
        eprintln!("amqp-perf: {error}");
        std::process::exit(2);
    }
    // The producers and consumers run on threads of their own (see `run`); this runtime only
    // declares the queues and reports.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("amqp-perf: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let quiet = args.quiet;
    let json = args.json;
    let outcome = runtime.block_on(amqp_perf::run(&args, |progress| {
        if quiet {
        } else if json {
            eprintln!("{progress}");
        } else {
            println!("{progress}");
        }
    }));
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("amqp-perf: {error}");
            std::process::exit(1);
        }
    };
    if json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.text());
    }
    // Connections still closing must not hold the exit.
    runtime.shutdown_background();
    std::process::exit(if summary.ok() { 0 } else { 3 });
}
