//! `amqp-dump`: print an AMQP 0-9-1 byte stream, one frame per line.
//!
//! ```sh
//! amqp-dump capture.bin                 # text, one line per frame
//! amqp-dump --json < capture.bin        # one JSON object per frame
//! amqp-dump --offsets --body-limit 16 capture.bin
//! echo '08 0000 00000000 ce' | amqp-dump --hex
//! ```
//!
//! Exit status: 0 when the whole input was frames; 1 when it was not (the frames before the
//! fault are printed, then `amqp-dump: error at offset N: CODE NAME: what` on stderr) or could
//! not be read; 2 for a bad command line. See the `amqp_tools::dump` module for the details.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use amqp_codec::describe::DEFAULT_BODY_LIMIT;
use amqp_tools::dump::{run, DumpError, Options};
use clap::Parser;

/// Print an AMQP 0-9-1 byte stream (one direction of a connection), one frame per line.
///
/// The stream may start with the protocol header ("AMQP" 0 0 9 1) or at any frame.
#[derive(Debug, Parser)]
#[command(name = "amqp-dump", version)]
struct Args {
    /// The stream to read; standard input when absent or "-".
    file: Option<PathBuf>,
    /// Print one JSON object per frame, fields under their spec names.
    #[arg(long)]
    json: bool,
    /// Show at most N octets of each body (and, in text, of each long string).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Refuse frames larger than N octets, framing included; 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    frame_max: u32,
    /// Start each line with the offset of the frame in the stream.
    #[arg(long)]
    offsets: bool,
    /// Read hex text (whitespace ignored, '#' comments to the end of the line).
    #[arg(long)]
    hex: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        json: args.json,
        body_limit: args.body_limit,
        frame_max: args.frame_max,
        offsets: args.offsets,
        hex: args.hex,
    };
    let out = BufWriter::new(io::stdout().lock());
    let result = match args.file {
        Some(path) if path.as_os_str() != "-" => match File::open(&path) {
            Ok(file) => run(file, out, &options),
            Err(e) => {
                eprintln!("amqp-dump: cannot open {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        _ => run(io::stdin().lock(), out, &options),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (`amqp-dump big.bin | head`): nothing left to do.
        Err(DumpError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-dump: {e}");
            ExitCode::FAILURE
        }
    }
}
