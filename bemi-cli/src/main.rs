//! The `bemi` command-line tool; see `bemi help` and [`bemi_cli`].

fn main() -> std::process::ExitCode {
    bemi_cli::main()
}
