//! The `bemi` command-line tool; see `bemi help` and [`bemi_worker::cli`].

fn main() -> std::process::ExitCode {
    bemi_worker::cli::main()
}
