//! Replays the fuzz corpora kept in `fuzz/corpus/` (inputs found by `cargo fuzz`, including
//! the ones that once crashed) through the same checks the fuzz targets run, so every CI run
//! catches a regression without a fuzzer.

mod checks {
    #![allow(dead_code)]
    include!("../../../fuzz/checks.rs");
}

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "corpus {} is empty", dir.display());
}

#[test]
fn selector_corpus() {
    replay("selector", checks::selector);
}

#[test]
fn service_ref_corpus() {
    replay("service_ref", checks::service_ref);
}

#[test]
fn discovery_objects_corpus() {
    replay("discovery_objects", checks::discovery_objects);
}

#[test]
fn mesh_config_corpus() {
    replay("mesh_config", checks::mesh_config);
}
