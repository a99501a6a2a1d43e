//! `rudder-apiserver`: the test Kubernetes API server as a standalone process.
//!
//! ```text
//! rudder-apiserver --kubeconfig PATH [--port N] [--demo]
//! ```
//! Writes a kubeconfig for the server to PATH, prints a line containing `ready` once it
//! serves, and runs until SIGINT or SIGTERM. `--demo` also starts the Kubernetes Services
//! chapter's `hello-svc` with 10 `app=hello-world` Pods served on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: rudder-apiserver --kubeconfig PATH [--port N] [--demo]";

struct Args {
    kubeconfig: PathBuf,
    port: u16,
    demo: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut kubeconfig = None;
    let mut port = 0;
    let mut demo = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => {
                kubeconfig = Some(PathBuf::from(
                    args.next().ok_or("--kubeconfig needs a path")?,
                ))
            }
            "--port" => {
                let v = args.next().ok_or("--port needs a number")?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port: not a port number: {v}"))?;
            }
            "--demo" => demo = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let kubeconfig = kubeconfig.ok_or_else(|| format!("--kubeconfig is required\n{USAGE}"))?;
    Ok(Args {
        kubeconfig,
        port,
        demo,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rudder-apiserver: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), rudder_testkit::Error> {
    let api = rudder_testkit::ApiServer::builder()
        .port(args.port)
        .start()
        .await?;
    let addr = api.addr();
    // Keep whichever owns the server alive until a signal arrives.
    let _running: (
        Option<rudder_testkit::ApiServer>,
        Option<rudder_testkit::TestCluster>,
    ) = if args.demo {
        let cluster = rudder_testkit::TestCluster::builder()
            .service("hello-svc")
            .pod_prefix("hello-world")
            .label("app", "hello-world")
            .replicas(10)
            .start_on(api)
            .await?;
        cluster.api().write_kubeconfig(&args.kubeconfig)?;
        (None, Some(cluster))
    } else {
        api.write_kubeconfig(&args.kubeconfig)?;
        (Some(api), None)
    };
    println!(
        "rudder-apiserver ready on https://{addr} (kubeconfig: {})",
        args.kubeconfig.display()
    );
    wait_for_signal().await?;
    eprintln!("rudder-apiserver: shutting down");
    let _ = std::fs::remove_file(&args.kubeconfig);
    Ok(())
}

async fn wait_for_signal() -> Result<(), rudder_testkit::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
