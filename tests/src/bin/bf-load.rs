//! The workloads of the interference benchmark (`tests/bench/interference.sh`), run as servers:
//!
//! - `bf-load work SECONDS`: a CPU-bound job of fixed-size units; prints the units per second.
//! - `bf-load tick SECONDS`: a latency-sensitive task: every 10 ms it wakes and does a sixteenth of a
//!   work unit; prints the p50 and p99 of lateness + work, in microseconds.
//! - `bf-load burn THREADS`: spins THREADS threads forever (a backfill server that wants every
//!   core).
//! - `bf-load hog MIB`: touches MIB of memory over and over, forever (a memory-hungry
//!   neighbour).
//!
//! Results are one JSON line on stdout (the server's log).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// One unit of work: 65,536 rounds of xorshift. Returns the state so nothing is optimised away.
fn unit(mut x: u64) -> u64 {
    for _ in 0..65_536 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// A sixteenth of a [`unit`].
fn small(mut x: u64) -> u64 {
    for _ in 0..4_096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("{what} must be a number"))
}

fn work(seconds: u64) {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut units: u64 = 0;
    let mut x = 0x9e37_79b9_7f4a_7c15;
    while Instant::now() < end {
        x = black_box(unit(x));
        units += 1;
    }
    let per_s = units as f64 / start.elapsed().as_secs_f64();
    println!("{{\"mode\":\"work\",\"units_per_s\":{per_s:.1},\"units\":{units}}}");
}

fn tick(seconds: u64) {
    let period = Duration::from_millis(10);
    let start = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    let mut next = start + period;
    let mut x = 1u64;
    while next < start + Duration::from_secs(seconds) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // A short request: a sixteenth of a unit (about 15 us on a 2.6 GHz core).
        x = black_box(small(x) >> 1 | 1);
        let done = Instant::now();
        samples.push(done.duration_since(next).as_micros() as u64);
        next += period;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or(0)
    };
    println!(
        "{{\"mode\":\"tick\",\"samples\":{},\"p50_us\":{},\"p99_us\":{}}}",
        samples.len(),
        at(0.5),
        at(0.99)
    );
}

fn burn(threads: usize) {
    let spinners: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                let mut x = i as u64 + 1;
                loop {
                    x = black_box(unit(x));
                }
            })
        })
        .collect();
    for s in spinners {
        let _ = s.join();
    }
}

fn hog(mib: usize) {
    let mut buf = vec![0u8; mib << 20];
    let mut round: u8 = 0;
    loop {
        round = round.wrapping_add(1);
        for page in buf.chunks_mut(4096) {
            page[0] = round;
        }
        black_box(&buf);
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let run = || -> Result<(), String> {
        match args.get(1).map(String::as_str) {
            Some("work") => work(arg(&args, 2, "SECONDS")?),
            Some("tick") => tick(arg(&args, 2, "SECONDS")?),
            Some("burn") => burn(arg(&args, 2, "THREADS")?),
            Some("hog") => hog(arg(&args, 2, "MIB")?),
            _ => return Err("usage: bf-load work|tick SECONDS | burn THREADS | hog MIB".into()),
        }
        Ok(())
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bf-load: {e}");
            std::process::ExitCode::from(64)
        }
    }
}
