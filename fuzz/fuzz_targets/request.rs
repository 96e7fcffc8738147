//! `resnet serve`'s request parsing (query, multipart, image, limits): see `resnet::fuzzing::request`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::request(data));
