//! Micro-benchmarks of the hot pure code: User-Agent classification with the
//! classic rule set, request-head checks, header rewriting, config parsing.
//! `cargo bench --bench micro`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use finguard::config::{self, Overrides};
use finguard::http1::{forward, head};

const CONF: &str = include_str!("../conf/finguard.toml");
const UAS: &str = include_str!("../tests/data/user-agents.tsv");

fn uas() -> Vec<&'static str> {
    UAS.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(1))
        .collect()
}

fn classify(c: &mut Criterion) {
    let cfg = config::parse("finguard.toml", CONF, &Overrides::default()).expect("shipped config");
    let policies = finguard::policy::Policies::new(cfg.client);
    let uas = uas();
    c.bench_function("classify: every UA of the data set (classic rules)", |b| {
        b.iter(|| {
            for ua in &uas {
                black_box(policies.classify(&cfg.rules, black_box(ua)));
            }
        })
    });
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    c.bench_function("classify: one browser UA (no rule matches)", |b| {
        b.iter(|| black_box(policies.classify(&cfg.rules, black_box(browser))))
    });
}

fn head_checks(c: &mut Criterion) {
    let raw = b"GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n\
Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\n\
Cookie: session=0123456789abcdef\r\n\r\n";
    c.bench_function("head: find end + parse + framing checks", |b| {
        b.iter(|| {
            let len = head::find_end(black_box(raw)).unwrap().unwrap();
            black_box(head::parse(raw, len, 1 << 20, true, false).unwrap())
        })
    });
}

fn rewrite(c: &mut Criterion) {
    let mut req = http::Request::get("https://www.example.com/index.html")
        .body(())
        .unwrap();
    for (k, v) in [
        ("user-agent", "Mozilla/5.0"),
        ("accept", "*/*"),
        ("x-trace", "1"),
        ("te", "trailers"),
        ("cookie", "a=b"),
        ("cookie", "c=d"),
    ] {
        req.headers_mut()
            .append(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
    }
    let (parts, ()) = req.into_parts();
    let peer = "192.0.2.7:40000".parse().unwrap();
    c.bench_function("headers: HTTP/2 request -> HTTP/1.1 head -> backend head", |b| {
        b.iter(|| {
            let (hb, head) = finguard::exchange::h2::h1_head(black_box(&parts), false, 1 << 16, 1 << 20).unwrap();
            let t = forward::target(&hb, &head).unwrap();
            let cx = forward::ForwardCtx {
                peer,
                scheme: "https",
                forwarded: finguard::config::Forwarded::XForwarded,
                default_host: "backend",
                upgrade: false,
            };
            let mut out = Vec::with_capacity(512);
            forward::write_head(&mut out, &hb, &head, &t, &cx);
            black_box(out)
        })
    });
}

fn parse_config(c: &mut Criterion) {
    c.bench_function("config: parse + validate conf/finguard.toml", |b| {
        b.iter(|| black_box(config::parse("finguard.toml", black_box(CONF), &Overrides::default()).unwrap()))
    });
}

criterion_group!(benches, classify, head_checks, rewrite, parse_config);
criterion_main!(benches);
