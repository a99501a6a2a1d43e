//! `rudder-apiserver`: the test Kubernetes API server as a standalone process.
//!
//! ```text
//! rudder-apiserver --kubeconfig PATH [--port N] [--demo] [--record FILE] [--force]
//! ```
//! Writes a kubeconfig for the server to PATH (refusing an existing file unless `--force`),
//! prints a line containing `ready` once it serves, runs until SIGINT or SIGTERM, and then
//! removes the kubeconfig it wrote (with `--force`, puts back what was there before). `--demo` also starts the Kubernetes Services
//! chapter's `hello-svc` with 10 `app=hello-world` Pods served on loopback. `--record FILE`
//! writes every watch event served, with its time and watch, one JSON object per line
//! (`rudder_testkit::Trace::read_recording` reads it, `ApiServer::replay` plays it).

use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    kubeconfig: PathBuf,
    port: u16,
    demo: bool,
    record: Option<PathBuf>,
    force: bool,
}

/// Parses the command line; `--help` prints usage and exits 0, a bad flag exits 2 naming it.
fn parse_args() -> Args {
    use clap::{Arg, ArgAction, Command, value_parser};
    let m = Command::new("rudder-apiserver")
        .about("The Rudder test Kubernetes API server, standalone, for kubectl and scripts")
        .arg(
            Arg::new("kubeconfig")
                .long("kubeconfig")
                .value_name("PATH")
                .help("Where to write a kubeconfig for the server (removed on exit)")
                .required(true)
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(
            Arg::new("port")
                .long("port")
                .value_name("N")
                .help("The port to listen on (default: any free one)")
                .default_value("0")
                .value_parser(value_parser!(u16)),
        )
        .arg(
            Arg::new("demo")
                .long("demo")
                .help("Also run the Services chapter's hello-svc with 10 Pods on loopback")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("record")
                .long("record")
                .value_name("FILE")
                .help("Write every watch event served, with its time, to FILE (JSON lines)")
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(
            Arg::new("force")
                .long("force")
                .help("Use PATH (and FILE) even if they exist; PATH's original contents are put back on exit")
                .action(ArgAction::SetTrue),
        )
        .get_matches();
    Args {
        kubeconfig: m
            .get_one::<PathBuf>("kubeconfig")
            .cloned()
            .unwrap_or_default(),
        port: m.get_one::<u16>("port").copied().unwrap_or(0),
        demo: m.get_flag("demo"),
        record: m.get_one::<PathBuf>("record").cloned(),
        force: m.get_flag("force"),
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    // Never clobber a file the user has (say, ~/.kube/config) unless asked.
    if args.kubeconfig.exists() && !args.force {
        eprintln!(
            "rudder-apiserver: {} exists; choose another path or pass --force to overwrite it",
            args.kubeconfig.display()
        );
        return ExitCode::from(2);
    }
    if let Some(record) = args.record.as_ref().filter(|r| r.exists() && !args.force) {
        eprintln!(
            "rudder-apiserver: {} exists; choose another file to record to or pass --force to replace it",
            record.display()
        );
        return ExitCode::from(2);
    }
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
    // What was at PATH before (only with --force), to put back on exit.
    let original = if args.force {
        std::fs::read(&args.kubeconfig).ok()
    } else {
        None
    };
    let mut builder = rudder_testkit::ApiServer::builder().port(args.port);
    if let Some(record) = &args.record {
        builder = builder.record(record);
    }
    let api = builder.start().await?;
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
    let stop = signals()?;
    println!(
        "rudder-apiserver ready on https://{addr} (kubeconfig: {})",
        args.kubeconfig.display()
    );
    stop.await;
    eprintln!("rudder-apiserver: shutting down");
    match original {
        Some(bytes) => std::fs::write(&args.kubeconfig, bytes)?,
        None => {
            let _ = std::fs::remove_file(&args.kubeconfig);
        }
    }
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before `ready` is printed, so a signal
/// sent right after it is not fatal) and returns a future that waits for either.
fn signals() -> Result<impl std::future::Future<Output = ()>, rudder_testkit::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
