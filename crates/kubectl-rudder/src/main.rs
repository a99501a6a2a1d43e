//! `kubectl rudder`: what a Rudder Mesh would route to, from the same discovery code.
//!
//! ```text
//! kubectl rudder endpoints SERVICE[.NAMESPACE][:PORT] [--selector SEL] [-o wide|json]
//!                          [-n NAMESPACE] [--context CONTEXT] [--kubeconfig PATH]
//! ```
//!
//! Installed on the `PATH` as `kubectl-rudder`, kubectl runs it for `kubectl rudder …`
//! and hands it every argument. It lists every endpoint of the Service port with its
//! address, Pod, node, zone, weight, state (ready, serving while terminating, or why it is
//! not routable), and with `--selector` whether it is in that label subset; `-o wide` adds
//! the Pod labels, `-o json` prints it all as JSON. A Service with no routable endpoint
//! says why. Errors (no such Service, no permission, no API) exit 1 with a message; bad
//! arguments exit 2.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, Command, value_parser};
use rudder_balance::{EmptyReason, EndpointSet, Readiness, Selector, ServiceState};
use rudder_k8s::Discovery;
use serde::Serialize;

struct Args {
    service: String,
    selector: Option<Selector>,
    output: Output,
    namespace: Option<String>,
    context: Option<String>,
    kubeconfig: Option<std::path::PathBuf>,
    timeout: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Output {
    Table,
    Wide,
    Json,
}

fn command() -> Command {
    Command::new("kubectl-rudder")
        .about("What a Rudder Mesh would route to, from the same discovery code")
        .subcommand_required(true)
        .subcommand(
            Command::new("endpoints")
                .about("Every endpoint of a Service port: routable or not, and why")
                .arg(
                    Arg::new("service")
                        .value_name("SERVICE[.NAMESPACE][:PORT]")
                        .required(true)
                        .help("The Service, as a Mesh reads it from a request's authority"),
                )
                .arg(
                    Arg::new("selector")
                        .long("selector")
                        .short('l')
                        .value_name("SELECTOR")
                        .help("Also say which endpoints this label subset holds (version=4.2)"),
                )
                .arg(
                    Arg::new("output")
                        .long("output")
                        .short('o')
                        .value_name("FORMAT")
                        .value_parser(["wide", "json"])
                        .help("wide: with Pod labels; json: everything"),
                )
                .arg(
                    Arg::new("namespace")
                        .long("namespace")
                        .short('n')
                        .value_name("NAMESPACE")
                        .help("The namespace of a SERVICE that names none"),
                )
                .arg(
                    Arg::new("context")
                        .long("context")
                        .value_name("CONTEXT")
                        .help("The kubeconfig context to use"),
                )
                .arg(
                    Arg::new("kubeconfig")
                        .long("kubeconfig")
                        .value_name("PATH")
                        .value_parser(value_parser!(std::path::PathBuf))
                        .help("The kubeconfig (default: KUBECONFIG, then ~/.kube/config)"),
                )
                .arg(
                    Arg::new("timeout")
                        .long("request-timeout")
                        .value_name("SECONDS")
                        .value_parser(value_parser!(u64))
                        .default_value("10")
                        .help("How long to wait for the API"),
                )
                .arg(Arg::new("v").short('v').action(ArgAction::Count).hide(true)),
        )
}

fn parse() -> Result<Args, clap::Error> {
    let m = command().try_get_matches()?;
    let (_, m) = m.subcommand().expect("a subcommand is required");
    let selector = match m.get_one::<String>("selector") {
        None => None,
        Some(s) => Some(s.parse::<Selector>().map_err(|e| {
            command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --selector {s:?}: {e}"),
            )
        })?),
    };
    Ok(Args {
        service: m.get_one::<String>("service").cloned().unwrap_or_default(),
        selector,
        output: match m.get_one::<String>("output").map(String::as_str) {
            Some("wide") => Output::Wide,
            Some("json") => Output::Json,
            _ => Output::Table,
        },
        namespace: m.get_one::<String>("namespace").cloned(),
        context: m.get_one::<String>("context").cloned(),
        kubeconfig: m.get_one::<std::path::PathBuf>("kubeconfig").cloned(),
        timeout: Duration::from_secs(*m.get_one::<u64>("timeout").unwrap_or(&10)),
    })
}

/// One endpoint as printed.
#[derive(Serialize)]
struct Row {
    address: String,
    port: u16,
    pod: Option<String>,
    node: Option<String>,
    zone: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    weight: Option<u32>,
    /// `ready`, `serving-terminating`, or `not routable`.
    state: &'static str,
    routable: bool,
    /// Why it is not routable.
    reason: Option<&'static str>,
    /// Whether `--selector` holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_subset: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    service: String,
    state: String,
    /// Why nothing is routable, when nothing is.
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<String>,
    endpoints: Vec<Row>,
}

fn empty_reason(set: &EndpointSet) -> Option<String> {
    if !set.is_empty() {
        return None;
    }
    Some(match set.empty_reason() {
        Some(EmptyReason::NoSuchPort) => format!(
            "the Service has no such port (its ports: {})",
            set.service_ports().join(", ")
        ),
        Some(EmptyReason::NoneReady) => "no endpoint is ready or serving".into(),
        Some(EmptyReason::NoEndpoints) | None => {
            "no endpoints (no Pod matches the selector)".into()
        }
        Some(_) => "no routable endpoint".into(),
    })
}

fn report(service: String, set: &EndpointSet, selector: Option<&Selector>) -> Report {
    let mut endpoints: Vec<Row> = set
        .endpoints()
        .iter()
        .map(|e| {
            let meta = e.meta();
            Row {
                address: e.addr().ip().to_string(),
                port: e.addr().port(),
                pod: meta.pod.as_deref().map(str::to_owned),
                node: meta.node.as_deref().map(str::to_owned),
                zone: meta.zone.as_deref().map(str::to_owned),
                labels: (*meta.labels).clone(),
                weight: Some(e.weight()),
                state: match e.readiness() {
                    Readiness::Ready => "ready",
                    _ => "serving-terminating",
                },
                routable: true,
                reason: None,
                in_subset: selector.map(|s| s.matches(&meta.labels)),
            }
        })
        .collect();
    endpoints.extend(set.unroutable().iter().map(|u| Row {
        address: u.address.to_string(),
        port: u.port,
        pod: u.pod.as_deref().map(str::to_string),
        node: u.node.as_deref().map(str::to_string),
        zone: u.zone.as_deref().map(str::to_string),
        labels: Default::default(),
        weight: None,
        state: "not routable",
        routable: false,
        reason: Some(u.reason.as_str()),
        in_subset: selector.map(|_| false),
    }));
    Report {
        service,
        state: match set.state() {
            ServiceState::Active => "active".into(),
            other => format!("{other:?}"),
        },
        empty_reason: empty_reason(set),
        selector: selector.map(ToString::to_string),
        endpoints,
    }
}

fn print_table(r: &Report, wide: bool) {
    let mut header = vec!["ADDRESS", "POD", "NODE", "ZONE", "STATE", "WEIGHT"];
    if r.selector.is_some() {
        header.push("IN SUBSET");
    }
    if wide {
        header.push("LABELS");
    }
    let dash = || "<none>".to_string();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for e in &r.endpoints {
        let mut row = vec![
            format!("{}:{}", e.address, e.port),
            e.pod.clone().unwrap_or_else(dash),
            e.node.clone().unwrap_or_else(dash),
            e.zone.clone().unwrap_or_else(dash),
            match e.reason {
                Some(why) => format!("not routable ({why})"),
                None => e.state.to_string(),
            },
            e.weight.map_or_else(|| "-".into(), |w| w.to_string()),
        ];
        if let Some(m) = e.in_subset {
            row.push(if m { "yes" } else { "no" }.into());
        }
        if wide {
            let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row.push(if labels.is_empty() {
                "<none>".into()
            } else {
                labels.join(",")
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        println!("{}", cells.join("   "));
    }
    if let Some(why) = &r.empty_reason {
        println!("{}: no routable endpoint: {why}", r.service);
    } else if let Some(sel) = &r.selector {
        let n = r
            .endpoints
            .iter()
            .filter(|e| e.in_subset == Some(true))
            .count();
        println!("{n} routable endpoint(s) in subset {sel}");
    }
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let options = kube::config::KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| format!("cannot load the kubeconfig: {e}"))?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("cannot load the kubeconfig: {e}"))?,
        // Like kubectl: KUBECONFIG or ~/.kube/config, else the in-cluster account.
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("cannot find a kubeconfig: {e}"))?,
    };
    if let Some(ns) = &args.namespace {
        config.default_namespace.clone_from(ns);
    }
    kube::Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))
}

async fn run(args: Args) -> Result<bool, String> {
    let client = client(&args).await?;
    let discovery = Discovery::new(client);
    let mut sub = discovery
        .subscribe_str(&args.service)
        .map_err(|e| e.to_string())?;
    let name = sub.service().to_string();
    let set = sub
        .synced(args.timeout)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    match set.state() {
        ServiceState::NotFound => return Err(format!("Service {name} not found")),
        ServiceState::Forbidden(m) => return Err(format!("{name}: not allowed: {m}")),
        ServiceState::Unreachable(m) => return Err(format!("{name}: API unreachable: {m}")),
        ServiceState::ExternalName(ext) => {
            println!("{name} is an ExternalName Service: requests go to {ext}");
            return Ok(true);
        }
        _ => {}
    }
    let r = report(name, &set, args.selector.as_ref());
    match args.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
            );
        }
        Output::Table | Output::Wide => print_table(&r, args.output == Output::Wide),
    }
    Ok(true)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            // `--help` and `--version` print and exit 0; errors exit 2 naming the problem.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
