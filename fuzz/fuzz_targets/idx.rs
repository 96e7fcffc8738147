//! IDX parsing (raw and gzip): see `resnet::fuzzing::idx`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::idx(data));
