//! `resnet`: the "Dive into Deep Learning" ResNet chapter in Rust, from scratch.
//!
//! Layering (nothing imports upward): [`kernels`] (pure numeric functions on slices) → [`nn`] (layers with
//! parameters, forward and backward side by side, and the chapter's model builders) → [`optim`] →
//! [`data`] → [`train`]. [`checkpoint`] moves weights to and from PyTorch's safetensors files.

#![warn(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod dist;
pub mod error;
pub mod fuzzing;
pub mod infer;
pub mod kernels;
pub mod model_file;
pub mod nn;
pub mod optim;
pub mod pth;
pub mod serve;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{ParamMut, Shape4};
