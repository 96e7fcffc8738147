//! ONNX models read as the network they hold: see `resnet::fuzzing::onnx`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::onnx(data));
