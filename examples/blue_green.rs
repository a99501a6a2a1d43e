//! Blue/green between `version=4.1` and `version=4.2` of `biz1` without touching the
//! Service: all traffic to 4.1, switch to 4.2, roll back, under continuous load and with no
//! failed request.
//!
//! ```text
//! cargo run --example blue_green
//! cargo run --example blue_green -- --kubeconfig ~/.kube/config   # a real cluster's biz1
//! ```

#[path = "common/mod.rs"]
mod common;

use rudder::{MeshLayer, Selector, Split};
use tower::Layer;

fn all_to(version: &str) -> Split {
    let selector: Selector = format!("version={version}").parse().expect("selector");
    Split::new([(selector, 1)]).expect("split")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "blue_green",
        "Blue/green between label subsets of one Service, switched at runtime",
        common::Flags {
            real_cluster: true,
            once: false,
        },
    );
    let requests = args.requests.unwrap_or(2_000);
    let (client, embedded) = common::client_or_embedded(&args, || {
        common::biz1(&[
            ("biz1-a", "4.1"),
            ("biz1-b", "4.1"),
            ("biz1-c", "4.2"),
            ("biz1-d", "4.2"),
        ])
    })
    .await?;

    let layer = MeshLayer::builder(client).split(all_to("4.1")).build()?;
    let mesh = layer.layer(common::h1());
    let mut failed = 0;
    for (step, version) in [
        ("blue", "4.1"),
        ("switch to green", "4.2"),
        ("roll back", "4.1"),
    ] {
        layer.set_split(Some(all_to(version)));
        let tally = common::load(&mesh, "http://biz1:8080/", requests, 8).await;
        let names = common::pod_names(&layer, "biz1:8080");
        let pods: Vec<String> = tally
            .per_endpoint
            .iter()
            .map(|(e, n)| format!("{} {n}", names.get(e).map_or(e.as_str(), String::as_str)))
            .collect();
        println!(
            "{step:<16} version={version}: {} ok, {} failed  [{}]",
            tally.ok(),
            tally.failures,
            pods.join(", ")
        );
        failed += tally.failures;
    }
    drop(embedded);
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}
