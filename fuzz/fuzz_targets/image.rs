//! Image decoding for `resnet predict`: see `resnet::fuzzing::image`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::image(data));
