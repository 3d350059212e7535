//! `veil-mini`: local clusters on one machine (`veil mini …` runs it).

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "veil mini",
    version,
    about = "A local Veil cluster: each node a process with its own software TPM (INSECURE by nature)"
)]
struct Cli {
    #[command(subcommand)]
    command: veil_mini::MiniCommand,
}

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => veil_mini::run(cli.command),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
