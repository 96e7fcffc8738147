//! Image transforms, bit-exact with what the chapter ran: torchvision's `Resize(size)` on a PIL image (Pillow's
//! bilinear resampling, result rounded to u8), `ToTensor` (÷255), optional `Normalize`, and optional augmentation
//! (random crop with zero padding, random horizontal flip).
//!
//! They take an [`Image`] of 1 (L) or 3 (RGB) channels, interleaved `h×w×c` as PIL stores it, and follow
//! torchvision's definitions on PIL images: [`resize`] (`Resize(size)`), [`center_crop`] (`CenterCrop`),
//! [`resized_crop`] + [`random_resized_crop_params`] (`RandomResizedCrop`), [`pad_crop`] + [`random_crop_params`]
//! (`RandomCrop(size, padding)`), [`hflip_image`] (`RandomHorizontalFlip`), [`to_tensor_chw`] (`ToTensor` +
//! `Normalize(mean[c], std[c])`), and on the tensor after them [`RandomErasing`] ([`random_erasing_params`] +
//! [`erase`]). A [`Pipeline`] chains them; the presets are [`Pipeline::cifar`], [`Pipeline::imagenet`] and
//! [`TransformConfig`](super::TransformConfig) (the chapter's).
//!
//! A file each: Pillow's resampling (`resize.rs`), the image and the operations on one image (`image.rs`),
//! `RandomErasing` on the tensor (`erasing.rs`), and the pipeline with its presets and the checks of its
//! settings (`pipeline.rs`).

mod erasing;
mod image;
mod pipeline;
mod resize;

pub use self::erasing::{
    erase, random_erasing_params, RandomErasing, ERASING_RATIO, ERASING_SCALE,
};
pub use self::image::{
    center_crop, center_offset, crop, hflip, hflip_image, luma, pad_crop, random_crop_params,
    random_resized_crop_params, resized_crop, to_tensor_chw, Image, RRC_RATIO, RRC_SCALE,
};
pub use self::pipeline::{
    augment_padding, check_normalize_values, check_resize, Pipeline, Step, INPUT_SIZES,
    MAX_INPUT_SIDE, MAX_RESIZED_SIDE, MAX_STORED_SIZE,
};
pub use self::resize::{resize, resize_shorter_side, resize_to, PilResize};

use rand::Rng;

/// Python's `round()` of a float (ties to even, `round(2.5) == 2`), as torchvision's crops use it.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torch's `uniform_(a, b)`: `a + (b − a)·u`, `u` uniform in `[0, 1)`.
fn uniform<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}
