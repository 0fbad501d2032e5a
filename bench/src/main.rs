//! The benchmarks of bemi-rs: `cargo run --release -p bemi-bench` prints a Markdown table and
//! writes it to `BENCHMARKS.md`; `--quick` runs tiny workloads once (a smoke test for CI) and
//! writes nothing unless `--output` is given.
//!
//! Every comparison measures its baseline and the tracked variant in alternating rounds of the
//! same run and reports medians, spreads and ratios: these machines are shared and noisy, so
//! absolute numbers mean little and are never asserted.

mod cpu;
mod env;
mod nats_speed;
mod report;
mod stats;
mod tamper_cost;
mod tracking_cost;
mod tracking_cpu;
mod ui_speed;
mod worker_speed;

use std::path::PathBuf;
use std::process::ExitCode;

use env::{Env, Sizes};

struct Options {
    quick: bool,
    output: Option<PathBuf>,
    only: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        output: None,
        only: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--output" => options.output = Some(args.next().ok_or("--output needs a file")?.into()),
            "--only" => options.only.push(
                args.next()
                    .ok_or("--only needs an id like P2")?
                    .to_uppercase(),
            ),
            "--help" | "-h" => {
                return Err(
                    "usage: bemi-bench [--quick] [--output FILE] [--only P1..P9]...".to_owned(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    if !options.quick && options.output.is_none() {
        options.output = Some("BENCHMARKS.md".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bemi-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.first().map(String::as_str) == Some("--worker-child") {
        let (url, slot) = (
            args.get(1).cloned().unwrap_or_default(),
            args.get(2).cloned().unwrap_or_default(),
        );
        return match runtime.block_on(worker_speed::worker_child(url, slot)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bemi-bench worker child: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match parse_args(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bemi-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> anyhow::Result<()> {
    let sizes = if options.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let wanted = |id: &str| options.only.is_empty() || options.only.iter().any(|o| o == id);
    let env = Env::start().await?;
    let mut rows = Vec::new();
    if wanted("P1") {
        eprintln!("P1: the Tower layer");
        rows.push(tracking_cost::p1_layer(&sizes).await?);
    }
    if wanted("P2") {
        eprintln!("P2: single-row inserts");
        rows.extend(tracking_cost::p2_inserts(&env, &sizes).await?);
        eprintln!("P2-cpu: server CPU per write, per adapter, against the limit");
        rows.extend(tracking_cpu::p2_cpu(&env, &sizes).await?);
    }
    if wanted("P3") {
        eprintln!("P3: a large UPDATE");
        rows.extend(tracking_cost::p3_update(&env, &sizes).await?);
    }
    if wanted("P4") {
        eprintln!("P4: worker throughput");
        rows.extend(worker_speed::p4_throughput(&env, &sizes).await?);
    }
    if wanted("P5") {
        eprintln!("P5: commit → visible latency");
        rows.extend(worker_speed::p5_latency(&env, &sizes).await?);
    }
    if wanted("P6") {
        eprintln!("P6: worker memory");
        rows.push(worker_speed::p6_memory(&env, &sizes).await?);
    }
    if wanted("P7") {
        eprintln!("P7: through NATS JetStream");
        rows.extend(nats_speed::p7_jetstream(&env, &sizes).await?);
    }
    if wanted("P8") {
        eprintln!("P8: the web UI on a large audit trail");
        rows.extend(ui_speed::p8_ui(&env, &sizes).await?);
    }
    if wanted("P9") {
        eprintln!("P9: tamper evidence (hash chain, signed contexts)");
        rows.extend(tamper_cost::p9_tamper(&env, &sizes).await?);
    }
    let table = report::markdown(&rows);
    println!("{table}");
    if let Some(path) = &options.output {
        let machine = machine_description();
        let mode = if options.quick {
            "quick (smoke) sizes"
        } else {
            "full sizes"
        };
        let document = format!(
            "# Benchmarks\n\nReproduce with `cargo run --release -p bemi-bench` ({mode}).\n\n\
             Machine: {machine}\n\n{table}\n{}",
            include_str!("../NOTES.md")
        );
        std::fs::write(path, document)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// CPU model, core count and memory, from /proc.
fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(
            || "unknown CPU".to_owned(),
            |l| l.trim_start_matches([' ', '\t', ':']).to_owned(),
        );
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {memory_gib:.0} GiB RAM")
}
