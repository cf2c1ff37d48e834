//! `finguard compare` end to end: the naive backend directly and behind
//! finguard, the same client mix against both; the JSON's verdict, and the
//! HTML report checked against the JSON.

mod support;

use finguard::simulate::naive::Naive;
use serde_json::Value;
use std::process::Command;
use support::*;

/// finguard as the demo runs it in front of the naive backend: the backend,
/// which leaks CLOSE_WAIT when its peer closes first, closes idle pooled
/// connections itself, and the reaper notices at once.
const FRONT: &str = "[client]\nkeepalive_timeout = \"1s\"\nheader_timeout = \"1s\"\nbody_timeout = \"2s\"\n\
[client.close]\nmode = \"lingering\"\nlinger_timeout = \"300ms\"\nlinger_time = \"2s\"\non_timeout = \"reset\"\n\
[reaper]\ninterval = \"200ms\"\n[log]\naccess = \"off\"\n";

fn pointer<'a>(v: &'a Value, p: &str) -> &'a Value {
    v.pointer(p).unwrap_or_else(|| panic!("no {p} in {v}"))
}

#[test]
fn compare_shows_the_naive_backends_leftovers_directly_and_none_through_finguard() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One backend per target, so that one run's leftovers (the naive
    // backend keeps CLOSE_WAIT for 20 s) cannot show in the other's census.
    let direct = rt.block_on(Naive::start()).unwrap();
    let behind = rt.block_on(Naive::start()).unwrap();
    let front = Proxy::start(FRONT, behind.addr);
    let json = TempFile::new("compare.json", "");
    let html = TempFile::new("compare.html", "");
    let out = Command::new(BIN)
        .arg("compare")
        .args(["--target", &format!("direct={}", direct.addr)])
        .args(["--target", &format!("finguard={}", front.addr)])
        .args(["--census-port", &format!("finguard={}", behind.addr.port())])
        .args([
            "--mix",
            "never-close:5,half-close:5",
            "--rate",
            "100",
            "--connections",
            "8",
        ])
        .args(["--duration", "2500ms"])
        .arg("--json")
        .arg(&json.0)
        .arg("--report")
        .arg(&html.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("latency p99 (ms)"), "{stdout}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json.0).unwrap()).unwrap();
    let targets = pointer(&r, "/targets").as_array().unwrap();
    assert_eq!(targets.len(), 2, "{r}");
    for t in targets {
        assert!(pointer(t, "/requests/answered").as_u64().unwrap() > 0, "{t}");
        assert!(pointer(t, "/latency_ms/count").as_u64().unwrap() > 0, "{t}");
        assert!(pointer(t, "/latency_ms/p50").as_f64().unwrap() > 0.0, "{t}");
        assert!(!pointer(t, "/latency_curve").as_array().unwrap().is_empty(), "{t}");
    }
    // Directly, the buggy clients leave FIN_WAIT_2 (never-close) and
    // CLOSE_WAIT (half-close) on the backend's port ...
    let (d, f) = (&targets[0], &targets[1]);
    assert_eq!(pointer(d, "/census/0/port"), &Value::from(direct.addr.port()));
    assert_eq!(pointer(d, "/census/0/fin_wait2_end"), &Value::from(5), "{d}");
    assert_eq!(pointer(d, "/census/0/close_wait_end"), &Value::from(5), "{d}");
    // ... and through finguard, none on the same kind of backend's port.
    assert_eq!(pointer(f, "/census/0/port"), &Value::from(behind.addr.port()));
    assert_eq!(pointer(f, "/census/0/fin_wait2_end"), &Value::from(0), "{f}");
    assert_eq!(pointer(f, "/census/0/close_wait_end"), &Value::from(0), "{f}");
    assert_eq!(pointer(f, "/census/1/port"), &Value::from(front.addr.port()));

    let page = std::fs::read_to_string(&html.0).unwrap();
    for external in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "<script",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(
            !page.contains(external),
            "the report refers to something outside: {external}"
        );
    }
    // Latency, throughput, and a census per watched port (2 + 1).
    assert!(page.matches("<svg").count() >= 5, "{page}");
    // Every number of the summary is the JSON's.
    let mut cells = 0;
    for cell in page.split("<td data-target=\"").skip(1) {
        let (name, rest) = cell.split_once('"').unwrap();
        let key = rest.split_once("data-key=\"").unwrap().1.split_once('"').unwrap().0;
        let text = rest.split_once('>').unwrap().1.split(['<', ' ']).next().unwrap();
        let t = targets.iter().find(|t| t["name"] == name).unwrap();
        let want = pointer(t, key).as_f64().unwrap();
        assert_eq!(
            text.parse::<f64>().ok(),
            Some(want),
            "{name} {key}: {text} in the page, {want} in the JSON"
        );
        cells += 1;
    }
    assert_eq!(cells, 2 * finguard::compare::summary::ROWS.len());
}

#[test]
fn a_bad_mix_or_an_unreachable_target_is_a_usage_error() {
    let dead = DeadPort::new();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("compare").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--target", "a=127.0.0.1:1", "--mix", "never-close:x"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--mix"), "{err}");
    let (code, err) = run(&["--target", "a=127.0.0.1:1", "--mix", "nonsense"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("known: never-close"), "{err}");
    let (code, err) = run(&["--target", &format!("gone={}", dead.addr), "--duration", "1s"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("gone") && err.contains("cannot connect"), "{err}");
}
