//! Every metric the dashboards and alert rules use is a constant in some crate's `metrics`
//! module (names are a contract, STYLE.md §7), and the README table lists each of them.

use std::collections::BTreeSet;

fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("npanel_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        let n = text[start..end].trim_end_matches('_');
        let n = n
            .strip_suffix("_bucket")
            .or_else(|| n.strip_suffix("_count"))
            .or_else(|| n.strip_suffix("_sum"))
            .unwrap_or(n);
        // Alert names like `NpanelQueuePaused` are not metrics; `npanel-jobs` uids have no '_'.
        if n.len() > "npanel_".len() {
            out.insert(n.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn dashboard_metrics_exist_in_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let code: String = [
        "queue/src/metrics.rs",
        "workers/src/metrics.rs",
        "api/src/metrics.rs",
        "ws/src/metrics.rs",
    ]
    .iter()
    .map(|p| read(p))
    .collect();
    let defined: BTreeSet<String> = names(&code)
        .into_iter()
        .filter(|n| code.contains(&format!("\"{n}\"")))
        .collect();
    let used =
        names(&(read("dashboards/grafana-npanel-jobs.json") + &read("dashboards/alerts.yml")));
    assert!(used.len() > 10, "{used:?}");
    let missing: Vec<_> = used.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "used by dashboards but not defined: {missing:?}"
    );
    let table = names(&read("dashboards/README.md"));
    let undocumented: Vec<_> = defined.difference(&table).collect();
    assert!(
        undocumented.is_empty(),
        "defined but not in dashboards/README.md: {undocumented:?}"
    );
}

/// `promtool check rules` on the alert rules, and `promtool test rules` on their unit tests
/// (`dashboards/alerts_test.yml`: every alert fires on what should raise it, not before its
/// `for`, and not on a healthy neighbour). Without promtool: a SKIP line, or a failure in CI
/// (`.ci/run` installs it, from Debian's `prometheus` package).
#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(promtool) = promtool else {
        assert!(
            std::env::var("CI").map_or(true, |v| v.is_empty()),
            "promtool is required in CI (apt-get install prometheus)"
        );
        eprintln!("SKIP alert rules: promtool is not installed (apt-get install prometheus)");
        return;
    };
    for args in [
        ["check", "rules", "dashboards/alerts.yml"],
        ["test", "rules", "dashboards/alerts_test.yml"],
    ] {
        let out = std::process::Command::new(promtool)
            .args(args)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(format!("{root}/dashboards/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{root}/dashboards/alerts_test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no test in alerts_test.yml"
            );
        }
    }
}
