//! Checkpoint loading: model files and training checkpoints with metadata and optimizer state: see `resnet::fuzzing::checkpoint`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::checkpoint(data));
