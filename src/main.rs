//! The `stella` binary: parse arguments, run the command, map its error to a documented exit
//! code (`docs/cli.md`). Everything else lives in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    stella::kernel::store::install_panic_hook();
    let cli = stella::cli::Cli::parse();
    match stella::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stella: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
