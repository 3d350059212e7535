//! `veil`: the owner's command-line tool.
//!
//! Argument parsing lives here; the work is done by the library crates. Exit status: 0 when
//! evidence is verified, 1 when it is rejected (the reason on stderr), 2 when the input is
//! unusable (unreadable files, unparsable formats, bad arguments).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use veil_cli::{attest, audit, cas, init, kubeconfig, measurements, node, output, recover, verify};

#[derive(Parser, Debug)]
#[command(
    name = "veil",
    version,
    about = "Confidential, compliant Kubernetes: verify everything yourself"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify and inspect attestation evidence offline.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// A local cluster on this machine, each node a process with its own software TPM (runs
    /// `veil-mini`, installed beside `veil`: `veil mini up|status|restart|down …`).
    Mini {
        /// The arguments of `veil-mini`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Verify the whole cluster: a report of every node, signed by the control plane's TPM
    /// over a fresh nonce, checked against the workspace.
    Verify(verify::VerifyArgs),
    /// Create the owner's workspace, attest the first control-plane node, hand it the master
    /// secret.
    Init(init::InitArgs),
    /// After every control-plane node restarted: resupply the master secret from the
    /// workspace to the (re-attested) control plane.
    Recover(recover::RecoverArgs),
    /// Manage the nodes of a running cluster: approve, remove, rotate keys.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Acknowledge the refusals the control planes report, so that they no longer fail
    /// `veil verify` (new ones will).
    AckRefusals(node::AckArgs),
    /// Compute, sign and verify reference values (expected measurements per node role).
    #[command(subcommand)]
    Measurements(measurements::MeasurementsCommand),
    /// The Configuration and Attestation Service: keys, provisioning, sessions, backups.
    #[command(subcommand)]
    Cas(cas::CasCommand),
    /// Verify a copy of a tamper-evident audit log offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Write a kubeconfig for the owner: the cluster CA derived from the master secret, a
    /// client certificate issued from it (cluster-admin).
    Kubeconfig(kubeconfig::KubeconfigArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(output::EXIT_UNUSABLE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Attest(cmd) => attest::run(cmd),
        Command::Measurements(cmd) => measurements::run(cmd),
        Command::Mini { args } => mini(&args),
        Command::Verify(a) => verify::run(a),
        Command::Recover(a) => recover::run(a),
        Command::Init(a) => init::run(a),
        Command::Node(cmd) => node::run(cmd),
        Command::AckRefusals(a) => node::ack(a),
        Command::Kubeconfig(a) => kubeconfig::run(a),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Cas(cmd) => cas::run(cmd),
    }
}

/// `veil mini …`: local clusters are `veil-mini`'s (it links the TPM stack; `veil` does not).
fn mini(args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("veil-mini")));
    let Some(path) = beside.filter(|p| p.exists()) else {
        eprintln!("error: veil-mini not found beside veil (build it: cargo build -p veil-mini)");
        return ExitCode::from(output::EXIT_UNUSABLE);
    };
    let e = std::process::Command::new(&path).args(args).exec();
    eprintln!("error: cannot run {}: {e}", path.display());
    ExitCode::from(output::EXIT_UNUSABLE)
}
