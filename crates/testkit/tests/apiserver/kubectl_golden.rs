//! The real `kubectl` (v1.32) against the captured scenario: what it prints must be what it
//! printed against a real kube-apiserver v1.34 (`tests/fixtures/kubectl/`), apart from what
//! varies between runs.

use serde_json::Value;

use super::golden::scenario;
use super::kubectl::Kubectl;
use super::support::{fixture_text, fixtures_dir};

/// A captured kubectl command: its stdout file, arguments and captured stderr (if any).
struct Command {
    stdout: String,
    args: Vec<String>,
    stderr: Option<String>,
}

/// The kubectl commands captured in `lines` of `index.jsonl`, in capture order.
fn commands(lines: std::ops::RangeInclusive<usize>) -> Vec<Command> {
    let index = fixture_text("index.jsonl");
    let entries: Vec<(usize, Value)> = index
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Some((i + 1, serde_json::from_str(l).ok()?)))
        .collect();
    let mut out: Vec<Command> = Vec::new();
    for (line, v) in &entries {
        let file = v["file"].as_str().unwrap_or_default();
        let Some(command) = v["command"].as_str() else {
            continue;
        };
        if !lines.contains(line) || command.contains("-v=8") {
            continue;
        }
        if file.ends_with(".stderr.txt") {
            if let Some(last) = out.last_mut() {
                last.stderr = Some(file.to_string());
            }
            continue;
        }
        // The index keeps the command without its shell quoting; one value had a space.
        let command = command.replace("description=book example", "description=book\u{0}example");
        let args = command
            .split(' ')
            .skip(1)
            .map(|a| {
                let a = a.replace('\u{0}', " ");
                // Manifests are given relative to the fixtures directory.
                if a.starts_with("kubectl/") {
                    fixtures_dir().join(&a).display().to_string()
                } else {
                    a
                }
            })
            .collect();
        out.push(Command {
            stdout: file.to_string(),
            args,
            stderr: None,
        });
    }
    out
}

/// Masks what varies between runs (fixtures README): ages, times, UIDs, cluster IPs,
/// generated names, which three endpoints a list starts with (slice order follows the
/// informer), and so the column widths around them.
fn masked(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let mut out: Vec<String> = Vec::with_capacity(tokens.len());
            let mut i = 0;
            while i < tokens.len() {
                let t = tokens[i];
                let more = tokens.get(i + 1) == Some(&"+") && tokens.get(i + 3) == Some(&"more...");
                if is_address_list(t) && more {
                    out.push(format!("<3 addresses> + {} more...", tokens[i + 2]));
                    i += 4;
                    continue;
                }
                out.push(if is_address_list(t) && t.contains(',') {
                    let mut items: Vec<&str> = t.split(',').collect();
                    items.sort_unstable();
                    items.join(",")
                } else if is_age(t) {
                    "<age>".into()
                } else if t.starts_with("10.96.") {
                    "<cluster-ip>".into()
                } else if t.len() >= 20 && t.starts_with("20") && t.ends_with('Z') {
                    "<time>".into()
                } else if let Some((prefix, suffix)) = t.rsplit_once('-')
                    && is_generated(suffix)
                {
                    format!("{prefix}-<generated>")
                } else {
                    t.to_string()
                });
                i += 1;
            }
            out.join(" ")
        })
        .collect::<Vec<String>>()
        // Rows of one Service's slices come in the order of their generated names.
        .chunk_by(|a, b| {
            let first = |l: &str| l.split(' ').next().unwrap_or_default().to_string();
            first(a).contains("<generated>") && first(a) == first(b)
        })
        .flat_map(|run| {
            let mut run = run.to_vec();
            run.sort();
            run
        })
        .collect()
}

/// `kubectl describe endpointslices` prints the slices in name order (generated) and each
/// slice's endpoints in the controller's informer order: both vary between runs, so the
/// objects (from `Name:`) and the endpoint entries (from `- Addresses:`) are sorted.
fn sorted_describe(lines: Vec<String>) -> Vec<String> {
    fn split_at_starts(lines: &[String], start: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let mut head = Vec::new();
        let mut groups: Vec<Vec<String>> = Vec::new();
        for l in lines {
            if l.starts_with(start) {
                groups.push(vec![l.clone()]);
            } else if let Some(g) = groups.last_mut() {
                g.push(l.clone());
            } else {
                head.push(l.clone());
            }
        }
        (head, groups)
    }
    let (head, objects) = split_at_starts(&lines, "Name:");
    let mut objects: Vec<Vec<String>> = objects
        .into_iter()
        .map(|object| {
            let (mut out, mut endpoints) = split_at_starts(&object, "- Addresses:");
            // The last entry runs into the object's trailing lines (`Events:`); keep those.
            let tail = endpoints.last_mut().map_or(Vec::new(), |last| {
                let at = last
                    .iter()
                    .position(|l| l.starts_with("Events:"))
                    .unwrap_or(last.len());
                last.split_off(at)
            });
            endpoints.sort();
            out.extend(endpoints.into_iter().flatten());
            out.extend(tail);
            // Blank lines separate objects; they stay between them, not with one of them.
            while out.last().is_some_and(String::is_empty) {
                out.pop();
            }
            out
        })
        .collect();
    objects.sort();
    let separator = [String::new(), String::new()];
    head.into_iter()
        .chain(objects.join(&separator[..]))
        .collect()
}

fn is_age(t: &str) -> bool {
    let units: String = t.chars().filter(|c| !c.is_ascii_digit()).collect();
    t.starts_with(|c: char| c.is_ascii_digit())
        && matches!(units.as_str(), "s" | "m" | "h" | "d" | "ms" | "hm" | "dh")
}

/// `a.b.c.d[:port]` items separated by commas.
fn is_address_list(t: &str) -> bool {
    t.split(',').all(|item| {
        let ip = item.split(':').next().unwrap_or_default();
        ip.parse::<std::net::Ipv4Addr>().is_ok()
    })
}

/// The five characters `generateName` appends (Kubernetes' alphabet has no vowels).
fn is_generated(s: &str) -> bool {
    s.len() == 5 && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
}

async fn compare(lines: std::ops::RangeInclusive<usize>, expected_commands: usize) {
    let h = scenario().await;
    let k = Kubectl::new(&h.server);
    let list = commands(lines);
    assert_eq!(list.len(), expected_commands, "selected commands");
    let mut diffs = Vec::new();
    for c in &list {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = k.run(&args).await;
        if !out.ok {
            diffs.push(format!("kubectl {args:?} failed: {}", out.stderr));
            continue;
        }
        h.server.settled().await;
        let mut pairs = vec![(c.stdout.as_str(), out.stdout.as_str())];
        if let Some(stderr) = &c.stderr {
            pairs.push((stderr.as_str(), out.stderr.as_str()));
        }
        for (file, ours) in pairs {
            let (theirs, ours) = (
                sorted_describe(masked(&fixture_text(file))),
                sorted_describe(masked(ours)),
            );
            if theirs != ours {
                diffs.push(format!(
                    "kubectl {}: {file}\n  expected: {theirs:#?}\n  got: {ours:#?}",
                    args.join(" ")
                ));
            }
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// `get` and `describe` of Pods, Services, Endpoints and EndpointSlices (index 85–107),
/// with the Endpoints deprecation warning on stderr.
#[tokio::test]
async fn kubectl_reads_print_what_they_printed_against_the_real_server() {
    compare(85..=107, 13).await;
}

/// `label`, `annotate`, `create -f` and `delete` (index 139–159), in the captured order.
#[tokio::test]
async fn kubectl_writes_print_what_they_printed_against_the_real_server() {
    compare(139..=159, 11).await;
}

/// `kubectl apply -f svc.yml` (the book's manifest, index 9) with kubectl's default
/// validation (strict, checked by the server): created as on the real server, then
/// unchanged, and `kubectl diff` finds nothing; a field that does not exist is refused.
#[tokio::test]
async fn kubectl_apply_of_the_book_manifest_validates_like_the_real_server() {
    let server = rudder_testkit::ApiServer::start().await.expect("server");
    let k = Kubectl::new(&server);
    let manifest = fixtures_dir().join("kubectl/svc.yml").display().to_string();
    let created = k.ok(&["apply", "-f", &manifest]).await;
    assert_eq!(
        masked(&created),
        masked(&fixture_text("kubectl/apply-svc-hello-svc.stdout.txt"))
    );
    assert_eq!(
        k.ok(&["apply", "-f", &manifest]).await,
        "service/hello-svc unchanged\n"
    );
    let diff = k.run(&["diff", "-f", &manifest]).await;
    assert!(
        diff.ok && diff.stdout.is_empty(),
        "{}{}",
        diff.stdout,
        diff.stderr
    );
    let bogus = k.manifest(
        "bogus.yaml",
        &fixture_text("kubectl/svc.yml")
            .replace("  type: NodePort", "  type: NodePort\n  bogus: 1"),
    );
    let refused = k.run(&["apply", "-f", &bogus]).await;
    assert!(
        !refused.ok && refused.stderr.contains("unknown field \"spec.bogus\""),
        "{}",
        refused.stderr
    );
}
