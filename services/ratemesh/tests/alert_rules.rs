//! The alert rules shipped in `deploy/alerts/` are valid Prometheus rules over the metrics
//! the services export, and their unit tests (an alert firing, and staying quiet when it
//! should) pass under `promtool`.

use std::path::PathBuf;

use ratemesh_runtime::metrics::FAMILIES;
use ratemesh_testkit::promtool;

fn alerts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/alerts")
}

fn path_of(file: &str) -> String {
    alerts_dir().join(file).to_string_lossy().into_owned()
}

#[test]
fn the_rules_file_passes_promtool_check_rules() {
    let answer = promtool::run(&["check", "rules", &path_of("ratemesh.rules.yaml")], None);
    assert!(
        answer.success,
        "promtool check rules (exit {:?}):\n{}",
        answer.code, answer.output
    );
}

#[test]
fn the_rules_unit_tests_pass() {
    let answer = promtool::run(
        &["test", "rules", &path_of("ratemesh.rules.test.yaml")],
        None,
    );
    assert!(
        answer.success,
        "promtool test rules (exit {:?}):\n{}",
        answer.code, answer.output
    );
}

#[test]
fn the_rules_query_only_metrics_the_services_export() {
    let rules = std::fs::read_to_string(alerts_dir().join("ratemesh.rules.yaml"))
        .expect("reading the rules file");
    let mut queried = 0;
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("ratemesh_") {
                queried += 1;
                assert!(
                    FAMILIES.iter().any(|f| f.name == word),
                    "the rules query {word}, which no service exports"
                );
            }
        }
    }
    assert!(queried >= 6, "every rule queries a ratemesh metric");
}
