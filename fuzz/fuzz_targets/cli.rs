//! The command line's shape and number parsing: see `resnet::fuzzing::cli`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::cli(data));
