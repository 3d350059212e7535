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
    if args.get(1).map(String::as_str) == Some("--supervise") {
        return supervise();
    }
    if args.get(1).map(String::as_str) == Some(veil_kube::exec::FLAG) {
        eprintln!(
            "{}",
            veil_kube::exec::exec_clean(args.get(2..).unwrap_or_default())
        );
        return ExitCode::from(127);
    }
    // What the agent runs itself goes through itself as a shim that drops its descriptors.
    if let Ok(me) = std::env::current_exe() {
        veil_kube::exec::set_shim(me);
    }
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
    // Its components are started by a supervisor process of their own, started now, before the
    // agent opens its TPM or mesh device: they inherit none of the agent's descriptors.
    let mut launcher = None;
    if let Some(k) = &cfg.kubernetes {
        // With a state volume, the machine-wide paths are bound once it is mounted.
        let private = veil_agent::kube::private_dir(&cfg);
        let entered = match k.state_volume {
            Some(_) => veil_kube::private::enter_private(&private),
            None => veil_kube::private::enter(&private, &cfg.state_dir.join("kube")),
        };
        if let Err(e) = entered {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        match std::env::current_exe().and_then(|exe| veil_kube::launcher::Launcher::spawn(&exe)) {
            Ok(child) => launcher = Some(child),
            Err(e) => {
                eprintln!("error: cannot start the supervisor process: {e}");
                return ExitCode::from(1);
            }
        }
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
    let result = rt.block_on(veil_agent::run(cfg, launcher));
    // Not a plain drop, which waits for every blocking task: a `ctr images import` cut off by
    // the stop (its containerd gone) kept a stopped agent alive past `veil mini restart`'s wait.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "agent stopped");
            ExitCode::from(1)
        }
    }
}

/// `veil-agent --supervise`: the supervisor process (see `veil_kube::launcher`).
fn supervise() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(veil_kube::launcher::serve_stdio(
        veil_agent::kube::STOP_GRACE,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "supervisor stopped");
            ExitCode::from(1)
        }
    }
}
