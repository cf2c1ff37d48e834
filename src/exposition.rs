//! The two text formats `/metrics` speaks, chosen by the scraper's `Accept`
//! as Prometheus itself negotiates: OpenMetrics 1.0 for a scraper that asks
//! for it (Prometheus does, and then keeps each family's type and help), the
//! classic 0.0.4 text format for everyone else (curl, `promtool check
//! metrics`, older scrapers, which parse only the classic format).
//!
//! The registry encodes OpenMetrics; the classic text is derived from it
//! here. Owns formats only: metric names are spelled in `metrics` alone.

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Classic => CLASSIC,
        }
    }
}

/// OpenMetrics when the `Accept` header offers it with a quality at least
/// that of the classic format; classic otherwise (no header included).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Classic };
    let (mut om, mut plain) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|v| v.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= plain {
        Format::OpenMetrics
    } else {
        Format::Classic
    }
}

/// The classic text format of an OpenMetrics exposition: a counter family
/// is named as its samples are (`_total`), as is an info family (`_info`,
/// typed gauge); `# UNIT`, `# EOF` and exemplars, which the classic format
/// lacks, are dropped.
pub fn to_classic(openmetrics: &str) -> String {
    let renamed: std::collections::HashMap<&str, (String, &str)> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let classic = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_string(), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            (name, classic)
        })
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            if let Some((classic, kind)) = renamed.get(name) {
                out.push_str(&format!("# TYPE {classic} {kind}\n"));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                let classic = renamed.get(name).map_or(name, |(c, _)| c.as_str());
                out.push_str(&format!("# HELP {classic} {help}\n"));
                continue;
            }
        }
        // An exemplar follows the value after " # ".
        let sample = if line.starts_with('#') {
            line
        } else {
            line.split_once(" # ").map_or(line, |(s, _)| s)
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_curl_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("*/*")), Format::Classic);
        assert_eq!(negotiate(None), Format::Classic);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Classic);
        assert_eq!(
            negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Classic
        );
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Classic);
    }

    #[test]
    fn classic_names_counter_families_as_their_samples() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{code=\"2xx\"} 3 # {id=\"a\"} 1.0\n\
                  # HELP x_open Open.\n# TYPE x_open gauge\n# UNIT x_open connections\nx_open 2\n\
                  # HELP x_build Build.\n# TYPE x_build info\nx_build_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{code=\"2xx\"} 3\n\
             # HELP x_open Open.\n# TYPE x_open gauge\nx_open 2\n\
             # HELP x_build_info Build.\n# TYPE x_build_info gauge\nx_build_info{v=\"1\"} 1\n"
        );
    }
}
