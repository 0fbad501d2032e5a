//! The `bemi` CLI as the end-to-end tests run it: a child process started from
//! `env!("CARGO_BIN_EXE_bemi-e2e")` (cargo only provides the binaries of the tests' own package).

fn main() -> std::process::ExitCode {
    bemi_cli::main()
}
