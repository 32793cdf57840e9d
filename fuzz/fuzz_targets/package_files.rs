//! Fuzz target `package_files`: see the framing and the checked properties in `fuzz/harness.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::package_file(data);
});
