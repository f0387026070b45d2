//! The `sluice` binary: the stream service and the plugin author's tools.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
