//! CIFAR-10/100 binary parsing: see `resnet::fuzzing::cifar`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::cifar(data));
