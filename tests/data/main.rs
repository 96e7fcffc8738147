//! Data pipeline: the bundled Fashion-MNIST files, the resize against Pillow's golden output, the loader, and
//! bad input (every failure an `Err` naming the file, never a panic). No Python needed.
//!
//! One test binary (`cargo test --test data`), split by topic:
//! - [`fashion_mnist`]: the bundled IDX files, their checksums and statistics, and bad IDX input;
//! - [`transforms`]: the resize and the colour transforms against Pillow's and torchvision's golden output;
//! - [`loader`]: batching, shuffling, augmentation, workers, and the presets through `open_data`;
//! - [`cifar`]: the CIFAR-10 and CIFAR-100 binary formats;
//! - [`folder`]: image folders (torchvision's rules), splits, bad files, and the export to a folder.

use std::path::{Path, PathBuf};

mod cifar;
mod fashion_mnist;
mod folder;
mod loader;
mod transforms;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts `r` is an `Err` whose message names `path` and contains `what`; returns the message.
fn expect_err<T: std::fmt::Debug>(r: resnet::Result<T>, path: &Path, what: &str) -> String {
    let msg = r.expect_err("expected an error").to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
    assert!(msg.contains(what), "message lacks {what:?}: {msg}");
    msg
}
