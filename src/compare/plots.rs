//! The report's plots as inline SVG (plotters' SVG backend): latency by
//! percentile, throughput over time, TCP states over time. Every plot has
//! labelled axes with units and a legend naming its series.

use super::{PortCensus, TargetReport};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const SIZE: (u32, u32) = (1000, 440);
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
/// The states drawn on a census plot, when seen.
const STATES: [&str; 7] = [
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "SYN_RECV",
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A line chart of named series of (x, y) points.
struct Lines<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

fn bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    (x0, x1.max(x0 + 1e-9), y0, y1.max(y0 + 1e-9))
}

fn draw_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<impl Ranged<ValueType = f64>, impl Ranged<ValueType = f64>>>,
    series: &[(String, Vec<(f64, f64)>)],
) {
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        if let Ok(a) = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2))) {
            a.label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    let _ = chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 15))
        .draw();
}

/// A linear chart.
fn linear(l: &Lines, integer_y: bool) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (x0, x1, _, y1) = bounds(&l.series);
        // Headroom above the highest line, where the legend sits.
        let top = if integer_y {
            (y1 * 1.45).ceil().max(2.0)
        } else {
            y1 * 1.45
        };
        let built = ChartBuilder::on(&root)
            .caption(l.caption, ("sans-serif", 20))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x0.min(0.0)..x1, 0f64..top);
        let Ok(mut c) = built else { return svg_fallback() };
        let _ = c
            .configure_mesh()
            .x_desc(l.x_desc)
            .y_desc(l.y_desc)
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .y_label_formatter(&|v| if integer_y { format!("{v:.0}") } else { format!("{v}") })
            .draw();
        draw_series(&mut c, &l.series);
        let _ = root.present();
    }
    svg
}

/// Latency by percentile, every target on one plot: x is -log10(1 - q), so
/// 90, 99, 99.9 and 99.99 are evenly spaced; y is logarithmic in ms.
pub fn latency(targets: &[TargetReport]) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = targets
        .iter()
        .map(|t| {
            let pts = t
                .latency_curve
                .iter()
                .map(|(p, ms)| (-(1.0 - p / 100.0).max(1e-5).log10(), ms.max(0.001)))
                .collect();
            (t.name.clone(), pts)
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (_, _, y0, y1) = bounds(&series);
        let y: plotters::coord::combinators::LogCoord<f64> =
            (y0.max(0.001) * 0.8..y1 * 1.5).log_scale().base(2.0).into();
        let x: RangedCoordf64 = (0f64..5.0).into();
        let built = ChartBuilder::on(&root)
            .caption(
                "Latency by percentile (from the intended send time)",
                ("sans-serif", 20),
            )
            .margin(15)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y);
        let Ok(mut c) = built else { return svg_fallback() };
        let _ = c
            .configure_mesh()
            .x_desc("percentile (%)")
            .y_desc("latency (ms, log scale)")
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .x_labels(6)
            .y_labels(12)
            .x_label_formatter(&|x| {
                let p = 100.0 * (1.0 - 10f64.powf(-x));
                format!("{}", (p * 1000.0).round() / 1000.0)
            })
            .y_label_formatter(&|v| format!("{}", (v * 1000.0).round() / 1000.0))
            .draw();
        draw_series(&mut c, &series);
        let _ = root.present();
    }
    svg
}

/// Responses per second over each target's run.
pub fn throughput(targets: &[TargetReport]) -> String {
    let series = targets
        .iter()
        .map(|t| {
            let pts = t
                .throughput
                .iter()
                .enumerate()
                // The last second is partial: its count would read as a drop.
                .filter(|(s, _)| (*s + 1) as f64 <= t.elapsed_s)
                .map(|(s, n)| (s as f64 + 0.5, *n as f64))
                .collect();
            (t.name.clone(), pts)
        })
        .collect();
    linear(
        &Lines {
            caption: "Throughput over time",
            x_desc: "time since the target's run began (s)",
            y_desc: "responses per second",
            series,
        },
        false,
    )
}

/// One port's sockets by state over one target's run.
pub fn census(target: &str, c: &PortCensus) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = STATES
        .iter()
        .filter(|s| c.peak.get(*s).copied().unwrap_or(0) > 0)
        .map(|s| {
            let pts = c
                .samples
                .iter()
                .map(|x| (x.t_s, x.counts.get(s).copied().unwrap_or(0) as f64))
                .collect();
            (s.to_string(), pts)
        })
        .collect();
    let caption = format!(
        "{target}: TCP sockets on port {} ({} port, server side)",
        c.port, c.role
    );
    linear(
        &Lines {
            caption: &caption,
            x_desc: "time since the target's run began (s)",
            y_desc: "sockets",
            series,
        },
        true,
    )
}

fn svg_fallback() -> String {
    "<svg width=\"10\" height=\"10\"></svg>".to_string()
}
