//! Results: percentiles, the progress bar, the human table, JSON.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

/// A latency or duration distribution in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(visible: bool) -> Progress {
        let visible = visible && std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress {
            bar: visible.then(ProgressBar::hidden),
        }
    }

    pub fn start(&self, what: &str, total: u64) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_position(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn set(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Formats a count with thousands separators.
pub fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as a short human duration.
pub fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// "p50 1.20 ms p99 3.44 ms p99.9 3.46 ms max 3.46 ms".
pub fn spread(p: &Percentiles) -> String {
    format!(
        "p50 {} p99 {} p99.9 {} max {}",
        micros(p.p50),
        micros(p.p99),
        micros(p.p999),
        micros(p.max)
    )
}

/// Prints `rows` of (label, value) as an aligned two-column table.
pub fn table(title: &str, rows: &[(String, String)]) {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!("{title}");
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}
