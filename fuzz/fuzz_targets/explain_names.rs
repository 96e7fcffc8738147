//! Grad-CAM's layer and class names (`--layer`, `--class`, `?layer=`, `?class=`): see `resnet::fuzzing::explain_names`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet::fuzzing::explain_names(data));
