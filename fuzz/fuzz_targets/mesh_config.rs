//! Fuzz target: see `checks::mesh_config` in `fuzz/checks.rs`.
#![no_main]

mod checks {
    #![allow(dead_code)]
    include!("../checks.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::mesh_config(data));
