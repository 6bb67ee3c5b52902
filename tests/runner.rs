//! One integration-test binary (faster to build than one per file).

mod common;
mod test_bootstrap;
mod test_browser;
mod test_budget_alert;
mod test_chaos;
mod test_command_snapshots;
mod test_commands;
mod test_contract;
mod test_cost;
mod test_fake_gce;
mod test_fake_github;
mod test_fleet;
mod test_gcp;
mod test_gcp_bulk;
mod test_github;
mod test_image;
mod test_image_import;
mod test_layers;
mod test_lifecycle;
mod test_loop;
mod test_opencode;
mod test_reports;
mod test_serve;
mod test_signals;
mod test_simulation;
mod test_ssh;
mod test_terraform;
mod test_tracker;
mod test_tracker_contract;
mod test_ttl;
mod test_workflow;

#[test]
fn no_forgotten_test_files() {
    let runner = include_str!("runner.rs");
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name
            .strip_prefix("test_")
            .and_then(|n| n.strip_suffix(".rs"))
        {
            assert!(
                runner.contains(&format!("mod test_{stem};")),
                "tests/{name} is not in tests/runner.rs"
            );
        }
    }
}
