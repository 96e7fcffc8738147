//! Quantized model files read as the int8 network they hold: see `resnet::fuzzing::quantized`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::quantized(data));
