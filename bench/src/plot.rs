//! A small SVG line chart: latency percentiles against offered load. Written by hand: it is
//! one chart, and an SVG needs no fonts or native libraries.

use std::fmt::Write as _;

/// One line on the chart.
pub struct Series {
    pub name: String,
    /// (offered deliveries per second, latency in microseconds)
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 820.0;
const H: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Draws `series` with a linear x axis and a logarithmic latency axis.
pub fn svg(title: &str, series: &[Series]) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_min_us = points
        .clone()
        .map(|p| p.1.max(1.0))
        .fold(f64::MAX, f64::min)
        .min(1000.0);
    let y_max_us = points.map(|p| p.1.max(1.0)).fold(1.0, f64::max);
    // Decades in milliseconds, covering the data.
    let lo = (y_min_us / 1000.0).log10().floor();
    let hi = ((y_max_us / 1000.0).log10().ceil()).max(lo + 1.0);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |us: f64| {
        let v = (us.max(1.0) / 1000.0).log10();
        TOP + plot_h - (v - lo) / (hi - lo) * plot_h
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Y grid: one line per decade.
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = TOP + plot_h - (d - lo) / (hi - lo) * plot_h;
        let label = format_ms(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    // X grid: five steps.
    for i in 0..=5 {
        let x = x_max * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{TOP}" x2="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            px(x),
            px(x),
            TOP + plot_h,
            px(x),
            TOP + plot_h + 18.0,
            short(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load (deliveries/s)</text>"#,
        LEFT + plot_w / 2.0,
        H - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    // One colour per target ("linechat (memory) p99" -> "linechat (memory)"), one dash per
    // percentile.
    let target_of = |name: &str| name.rsplit_once(' ').map_or(name, |(t, _)| t).to_string();
    let mut targets: Vec<String> = Vec::new();
    for s in series {
        let t = target_of(&s.name);
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    for (i, series) in series.iter().enumerate() {
        let target = targets
            .iter()
            .position(|t| *t == target_of(&series.name))
            .unwrap_or(0);
        let colour = COLOURS[target % COLOURS.len()];
        let dash = if series.name.contains("p50") {
            ""
        } else if series.name.contains("p99.9") {
            r#" stroke-dasharray="2 3""#
        } else {
            r#" stroke-dasharray="6 3""#
        };
        let path: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in &series.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let lx = W - RIGHT + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series() {
        let s = svg(
            "t",
            &[
                Series {
                    name: "linechat p50".into(),
                    points: vec![(1000.0, 300.0), (5000.0, 900.0)],
                },
                Series {
                    name: "nats p99".into(),
                    points: vec![(1000.0, 2000.0)],
                },
            ],
        );
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("linechat p50"));
    }
}
