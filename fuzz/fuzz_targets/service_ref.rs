//! Fuzz target: see `checks::service_ref` in `fuzz/checks.rs`.
#![no_main]

mod checks {
    #![allow(dead_code)]
    include!("../checks.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::service_ref(data));
