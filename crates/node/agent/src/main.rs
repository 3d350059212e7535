//! `veil-agent --config FILE`: the node agent (see the library of this crate).

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, flag, path] = args.as_slice() else {
        eprintln!("usage: veil-agent --config FILE");
        return ExitCode::from(2);
    };
    if flag != "--config" {
        eprintln!("usage: veil-agent --config FILE");
        return ExitCode::from(2);
    }
    let cfg: veil_agent::AgentConfig = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_norway::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    // A node that runs Kubernetes gets a mount namespace of its own with its private tmpfs,
    // entered while this is the only thread.
    if cfg.kubernetes.is_some()
        && let Err(e) = veil_kube::private::enter(&veil_agent::kube::private_dir(&cfg))
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(veil_agent::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "agent stopped");
            ExitCode::from(1)
        }
    }
}
