//! ResNet from scratch on the CPU: the "Dive into Deep Learning" chapter's ResNet-18 and torchvision's resnet18 to
//! resnet152, with hand-written kernels, training and fine-tuning, weights interchangeable with PyTorch's
//! (safetensors and `.pth`), inference, data-parallel training over MPI (feature `mpi`) and an HTTP server. The
//! `resnet` binary drives it all from the command line; this library is the same code, for use from Rust.
//!
//! # Modules
//!
//! Layering (nothing imports upward): [`kernels`] (pure numeric functions on slices) → [`nn`] (layers with
//! parameters, forward and backward side by side, and the networks an [`nn::ResNetConfig`] describes) →
//! [`optim`] (torch's optimizers and schedules) → [`data`] (datasets, torchvision's transforms, the batch loader)
//! → [`train`] (the training loop, its checkpoints and metrics), with [`dist`] for a data-parallel job.
//!
//! Around them: [`tensor`] (shapes, layouts), [`checkpoint`] and [`pth`] (weights to and from PyTorch's files),
//! [`model_file`] (a model file's weights and metadata, typed and checked once), [`infer`] (a model file turned
//! into predictions), [`explain`] (Grad-CAM heatmaps: why the model said so), [`serve`] (the HTTP server),
//! [`bench`](mod@bench) (the measurements), [`cli`] and [`commands`] (the command line's arguments and one function
//! per subcommand), [`out`] (standard output, which ends quietly when its reader has gone), [`fuzzing`] (the fuzz
//! targets' bodies) and [`error`].
//!
//! # Example
//!
//! A network is built from its description, as torchvision's `ResNet(block, layers)` is; inputs are NCHW
//! `f32` slices with a [`Shape4`], as PyTorch's tensors are.
//!
//! ```
//! use resnet::nn::{ArchName, Buffers, ResNet, ResNetConfig, Stem};
//! use resnet::Shape4;
//!
//! // torchvision's resnet18 at an eighth of its widths, with the small stem CIFAR-sized images use.
//! let config = ResNetConfig {
//!     widths: vec![8, 16, 32, 64],
//!     stem: Stem::Small,
//!     ..ResNetConfig::named(ArchName::Resnet18, 3, 10)
//! };
//! let mut net = ResNet::new(config, 0)?;
//! net.set_train(false);
//!
//! let xs = Shape4::new(2, 3, 32, 32);
//! let x = vec![0.5f32; xs.len()];
//! let logits = net.forward(&x, xs, Buffers::Own)?;
//! assert_eq!(logits.len(), 2 * 10);
//! assert_eq!(net.shape_walk(xs)?.last().unwrap().1, [2, 10]);
//! # Ok::<(), resnet::Error>(())
//! ```
//!
//! The examples go further: `torchvision_resnet18` (build, shape walk, parameter count, top 5),
//! `train_tensors` (an optimizer's training loop on tensors in memory), `save_load_predict` (a model file
//! written, read back and asked for a prediction), `chapter` (the chapter's cells) and `export_folder` (the
//! bundled Fashion-MNIST written as an image folder); run one with `cargo run --release --example NAME`.

#![warn(missing_docs)]
// Standard output goes through `outln!` (src/out.rs), which ends quietly when the reader has gone.
#![deny(clippy::print_stdout)]

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod compiled;
pub mod data;
pub mod dist;
pub mod error;
pub mod explain;
pub mod files;
pub mod fuzzing;
pub mod infer;
pub mod kernels;
pub mod model_file;
pub mod nn;
pub mod onnx;
pub mod optim;
pub mod out;
pub mod pth;
pub mod serve;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{ParamMut, Shape4};
