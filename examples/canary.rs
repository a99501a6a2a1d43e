//! A 90/10 canary of `biz1` `version=4.2` beside `version=4.1`, then its promotion, by
//! labels alone (kube-proxy would need a second Service and DNS tricks to do this).
//!
//! ```text
//! cargo run --example canary
//! cargo run --example canary -- --kubeconfig ~/.kube/config   # a real cluster's biz1
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use rudder::{MeshLayer, Selector, Split};
use tower::Layer;

fn split(v41: u32, v42: u32) -> Split {
    let leg = |v: &str, w| {
        (
            format!("version={v}")
                .parse::<Selector>()
                .expect("selector"),
            w,
        )
    };
    Split::new([leg("4.1", v41), leg("4.2", v42)]).expect("split")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "canary",
        "A 90/10 canary between label subsets, then its promotion",
        common::Flags {
            real_cluster: true,
            once: false,
        },
    );
    let requests = args.requests.unwrap_or(10_000);
    let (client, embedded) = common::client_or_embedded(&args, || {
        common::biz1(&[
            ("biz1-a", "4.1"),
            ("biz1-b", "4.1"),
            ("biz1-c", "4.1"),
            ("biz1-canary", "4.2"),
        ])
    })
    .await?;

    let layer = MeshLayer::builder(client).split(split(90, 10)).build()?;
    let mesh = layer.layer(common::h1());
    let mut failed = 0;
    for (step, weights) in [("canary 90/10", (90, 10)), ("promote", (0, 100))] {
        layer.set_split(Some(split(weights.0, weights.1)));
        let tally = common::load(&mesh, "http://biz1:8080/", requests, 8).await;
        let versions: BTreeMap<String, String> = layer
            .view("biz1:8080")
            .map(|v| v.endpoints)
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e.addr.to_string(),
                    e.labels.get("version").cloned().unwrap_or_default(),
                )
            })
            .collect();
        let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
        for (endpoint, n) in &tally.per_endpoint {
            *shares
                .entry(versions.get(endpoint).map_or("?", String::as_str))
                .or_default() += n;
        }
        let shares: Vec<String> = shares
            .iter()
            .map(|(v, n)| format!("{v}: {:.1}%", 100.0 * *n as f64 / tally.ok().max(1) as f64))
            .collect();
        println!(
            "{step:<14} {} requests, {} failed: {}",
            tally.ok() + tally.failures,
            tally.failures,
            shares.join(", ")
        );
        failed += tally.failures;
    }
    drop(embedded);
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}
