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
    keep_large_buffers_in_the_heap();
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

/// glibc's malloc serves allocations over 128 KiB with `mmap` and gives free memory over
/// 128 KiB at the top of the heap back to the kernel. amqp-perf takes a 1 MiB chunk of
/// bodies (body.rs) every 16 bodies of 64 KiB and 256 KiB read buffers (amqp-client), all
/// freed again within moments: with the defaults each costs page faults and the kernel's
/// zeroing of its pages, up to 16 faults per 64 KiB message. Kept in the heap they are reused
/// warm. Before any thread starts; `GLIBC_TUNABLES` set by the user wins.
fn keep_large_buffers_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        /// Allocations up to this size come from the heap.
        const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
        /// Free memory at the top of the heap kept for reuse.
        const TRIM_THRESHOLD: libc::c_int = 64 * 1024 * 1024;
        // SAFETY: mallopt only sets two allocator parameters, before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
