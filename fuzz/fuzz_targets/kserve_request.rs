//! Fuzz target `kserve_request`: see the framing and the checked properties in
//! `fuzz/kserve_harness.rs`.
#![no_main]

#[path = "../harness.rs"]
mod harness;
#[path = "../kserve_harness.rs"]
mod kserve_harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kserve_harness::kserve_request(data);
});
