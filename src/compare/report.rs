//! The self-contained HTML report: inline CSS and SVG, no script, nothing
//! fetched, so it opens anywhere offline and can be mailed as one file.

use super::summary::{self, ROWS};
use super::{plots, Report};
use std::fmt::Write;

/// Text for HTML: the five characters that could open markup, escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}.ratio{color:#777;font-size:85%;margin-left:.4em}\
pre{background:#f4f4f4;padding:.8em;white-space:pre-wrap}figure{margin:1.5em 0}";

/// The whole page.
pub fn html(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>finguard compare: {}</title><style>{STYLE}</style></head><body>\n",
        esc(&r
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(" vs "))
    );
    let _ = write!(o, "<h1>finguard compare</h1>\n{}", parameters(r));
    o.push_str("<h2>Summary</h2>\n");
    o.push_str(&summary_table(r));
    o.push_str(
        "<p>Ratios are against the first target. Latency runs from the time a request was due \
         (constant arrival rate), so waiting for a free connection counts. Census: the port's \
         server-side sockets (those whose local port it is), every 250 ms and at the end with every \
         client socket still open; it counts whatever is on the port, so a later target's census of \
         a shared backend port also shows what an earlier run left there (TIME_WAIT lasts 60 s).</p>\n",
    );
    let _ = write!(
        o,
        "<h2>Latency</h2>\n<figure>{}</figure>\n<h2>Throughput</h2>\n<figure>{}</figure>\n",
        plots::latency(&r.targets),
        plots::throughput(&r.targets)
    );
    o.push_str("<h2>TCP states over time</h2>\n");
    for t in &r.targets {
        for c in &t.census {
            let _ = writeln!(o, "<figure>{}</figure>", plots::census(&t.name, c));
        }
    }
    o.push_str(&scenarios(r));
    o.push_str("</body></html>\n");
    o
}

fn parameters(r: &Report) -> String {
    let mut o = String::new();
    let mix: Vec<String> = r
        .mix
        .iter()
        .map(|m| format!("{}:{}", m.scenario.name(), m.connections))
        .collect();
    let _ = write!(
        o,
        "<p>Started {} · {} GET {} per second for {} s per target over up to {} keep-alive connections · \
         buggy clients: {}{}</p>\n<p>To repeat this run:</p><pre>{}</pre>\n<table><tr><th>target</th><th>address</th></tr>\n",
        esc(&r.started),
        r.rate,
        esc(&r.path),
        r.duration_s,
        r.connections,
        if mix.is_empty() { "none".to_string() } else { esc(&mix.join(", ")) },
        if r.stopped_early { " · <b>stopped early</b>" } else { "" },
        esc(&r.command)
    );
    for t in &r.targets {
        let _ = writeln!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(&t.name), esc(&t.addr));
    }
    o.push_str("</table>\n");
    o
}

fn summary_table(r: &Report) -> String {
    let mut o = String::from("<table id=\"summary\"><tr><th></th>");
    for t in &r.targets {
        let _ = write!(o, "<th>{}</th>", esc(&t.name));
    }
    o.push_str("</tr>\n");
    for row in &ROWS {
        let _ = write!(o, "<tr><td>{}</td>", esc(row.label.trim()));
        let first = r.targets.first().and_then(|t| summary::value(t, row));
        for (i, t) in r.targets.iter().enumerate() {
            let v = summary::value(t, row);
            let ratio = summary::ratio(v, first, row);
            let _ = write!(
                o,
                "<td data-target=\"{}\" data-key=\"{}\">{}",
                esc(&t.name),
                row.key,
                summary::format(v, row)
            );
            if i > 0 && !ratio.is_empty() {
                let _ = write!(o, "<span class=\"ratio\">{ratio}</span>");
            }
            o.push_str("</td>");
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    o
}

fn scenarios(r: &Report) -> String {
    if r.mix.is_empty() {
        return String::new();
    }
    let mut o = String::from(
        "<h2>Buggy clients</h2>\n<table><tr><th>target</th><th>scenario</th><th>connections</th>\
         <th>sent</th><th>complete</th><th>lost to reset</th><th>missing</th></tr>\n",
    );
    for t in &r.targets {
        for s in &t.scenarios {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.name),
                s.scenario.name(),
                s.connections,
                s.requests_sent,
                s.responses_complete,
                s.responses_lost_to_reset,
                s.responses_missing
            );
        }
    }
    o.push_str("</table>\n");
    o
}
