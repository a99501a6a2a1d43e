//! The results: markdown tables on stdout and in `RESULTS.md`, and small SVG bar charts.
//!
//! The charts are written by hand: they are a few bars with labels, and plotters' text
//! layout needs a font backend (`ttf` → font-kit and system font libraries) that this
//! workspace does not otherwise need.

use std::fmt::Write as _;
use std::path::Path;

/// Formats microseconds for a table cell.
pub(crate) fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// One markdown table.
pub(crate) struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub(crate) fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n| {} |\n|", self.title, self.headers.join(" | "));
        s += &"---|".repeat(self.headers.len());
        s += "\n";
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        for n in &self.notes {
            let _ = write!(s, "\n{n}\n");
        }
        s
    }
}

/// A horizontal bar chart.
pub(crate) struct Chart {
    title: String,
    unit: String,
    bars: Vec<(String, f64)>,
}

impl Chart {
    pub(crate) fn new(title: &str, unit: &str) -> Self {
        Self {
            title: title.to_string(),
            unit: unit.to_string(),
            bars: Vec::new(),
        }
    }

    pub(crate) fn bar(&mut self, label: &str, value: f64) {
        self.bars.push((label.to_string(), value));
    }

    fn svg(&self) -> String {
        let (left, width, bar, gap) = (300.0, 420.0, 22.0, 10.0);
        let height = 50.0 + self.bars.len() as f64 * (bar + gap);
        let max = self
            .bars
            .iter()
            .map(|b| b.1)
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
            escape(&self.title),
            w = left + width + 120.0,
        );
        for (i, (label, value)) in self.bars.iter().enumerate() {
            let y = 40.0 + i as f64 * (bar + gap);
            let len = width * value / max;
            let _ = writeln!(
                s,
                "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"#3b75af\"/>\
                 <text x=\"{vx:.1}\" y=\"{ty}\">{value:.1} {}</text>",
                escape(label),
                escape(&self.unit),
                tx = left - 8.0,
                ty = y + bar * 0.72,
                vx = left + len + 6.0,
            );
        }
        s + "</svg>\n"
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Everything one run reports.
pub(crate) struct Report {
    smoke: bool,
    tables: Vec<Table>,
    charts: Vec<(String, Chart)>,
}

impl Report {
    pub(crate) fn new(smoke: bool) -> Self {
        Self {
            smoke,
            tables: Vec::new(),
            charts: Vec::new(),
        }
    }

    pub(crate) fn table(&mut self, t: Table) {
        println!("\n{}", t.markdown());
        self.tables.push(t);
    }

    pub(crate) fn chart(&mut self, file: &str, c: Chart) {
        self.charts.push((file.to_string(), c));
    }

    /// Writes `RESULTS.md` (or `RESULTS-smoke.md`) and the charts into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let date = jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string();
        let mut md = format!(
            "# Rudder against ClusterIP routing\n\n\
             Measured {date} on {cores} cores ({cpu}), Linux {kernel_trim}, release build.\n\n\
             Command: `cargo bench --bench clusterip` (as root; see `benches/clusterip/main.rs`).\n\n\
             Pods are network namespaces with veth pairs on a bridge (10.244.x.y), each running a\n\
             `rudder-testkit` Pod server; a kube-proxy equivalent programs NAT from the same test API\n\
             server Rudder watches, in both of kube-proxy's modes: iptables (`KUBE-SERVICES` →\n\
             `KUBE-SVC-*` with `statistic --mode random` → `KUBE-SEP-*` DNAT, `iptables-restore`)\n\
             and nftables (a verdict map to per-Service chains choosing with `numgen random`, `nft\n\
             -f`, at a second VIP), each with a 1 s minimum sync period. \"naive round robin\" is the\n\
             same client sending each request to the next Pod of a fixed list, with the Service's\n\
             `Host`: the fair baseline for the layer's own cost. Arms use the same hyper-util client\n\
             and settings and run interleaved; each\n\
             cell is repeated 3 times and shows the median with the min–max range in brackets.\n\
             Latencies include the client, the kernel path and the Pod server on this machine;\n\
             CPU is the client process (which also hosts the API server and the proxy) per request;\n\
             machine CPU and switches are the whole machine's (Pod servers and kernel included),\n\
             from `/proc/stat`.\n",
            kernel_trim = kernel.trim(),
        );
        if self.smoke {
            md.insert_str(
                0,
                "> Smoke run: tiny durations, one repetition; numbers mean nothing.\n\n",
            );
        }
        for t in &self.tables {
            md += "\n";
            md += &t.markdown();
        }
        md += "\n## Charts\n\n";
        for (file, c) in &self.charts {
            std::fs::write(dir.join(file), c.svg())?;
            let _ = writeln!(md, "![{}]({file})\n", c.title);
        }
        let name = if self.smoke {
            "RESULTS-smoke.md"
        } else {
            "RESULTS.md"
        };
        // The scale and soak benches own the sections from "## Scale" and "## Soak" on;
        // keep them.
        if let Ok(old) = std::fs::read_to_string(dir.join(name))
            && let Some(at) = ["\n## Scale", "\n## Soak"]
                .iter()
                .filter_map(|h| old.find(h))
                .min()
        {
            md += &old[at..];
        }
        std::fs::write(dir.join(name), md)?;
        println!("\nwrote {}", dir.join(name).display());
        Ok(())
    }
}
