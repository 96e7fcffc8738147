//! PyTorch `.pth` state dicts (zip archive, pickle, storages): see `resnet::fuzzing::pth`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::pth(data));
