//! Data pipeline: the bundled Fashion-MNIST files, the resize against Pillow's golden output, the loader, and
//! bad input (every failure an `Err` naming the file, never a panic). No Python needed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use resnet::data::fashion_mnist::{sha256_file, verify_checksum, FILES};
use resnet::data::transforms::{resize_like_pil, resize_shorter_side};
use resnet::data::{
    find_data_dir, read_idx, read_images, read_labels, Dataset, Loader, Split, TransformConfig,
};

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

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// An IDX u8 file: header for `dims`, then `data`.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
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

// ---------------------------------------------------------------------------------------------------------------
// The bundled files

#[test]
fn bundled_files_match_official_checksums() {
    for (name, sha) in FILES {
        let path = bundled().join(name);
        assert_eq!(sha256_file(&path).unwrap(), sha, "{name}");
        verify_checksum(&path).unwrap();
    }
}

#[test]
fn train_split_counts_and_statistics() {
    let d = Dataset::load(&bundled(), Split::Train, true).unwrap();
    assert_eq!((d.n, d.h, d.w), (60_000, 28, 28));
    assert_eq!(d.images.len(), 60_000 * 28 * 28);
    assert_eq!(d.class_counts(), [6_000; 10]);
    let (mean, std) = d.pixel_mean_std();
    assert_eq!(format!("{mean:.4} {std:.4}"), "0.2860 0.3530");
}

#[test]
fn test_split_counts_and_statistics() {
    let d = Dataset::load(&bundled(), Split::Test, true).unwrap();
    assert_eq!((d.n, d.h, d.w), (10_000, 28, 28));
    assert_eq!(d.class_counts(), [1_000; 10]);
    let (mean, std) = d.pixel_mean_std();
    assert_eq!(format!("{mean:.4} {std:.4}"), "0.2868 0.3524");
    // The first test images' labels (ankle boot, pullover, trouser, trouser, shirt).
    assert_eq!(&d.labels[..5], &[9, 2, 1, 1, 6]);
    assert_eq!(resnet::data::CLASS_NAMES[9], "ankle boot");
}

#[test]
fn take_limits_the_dataset() {
    let d = Dataset::load(&bundled(), Split::Test, false).unwrap();
    let first = d.image(99).to_vec();
    let d = d.take(100);
    assert_eq!((d.n, d.images.len(), d.labels.len()), (100, 100 * 784, 100));
    assert_eq!(d.image(99), &first[..]);
}

#[test]
fn uncompressed_files_load_the_same_and_skip_the_checksum() {
    let dir = scratch("uncompressed");
    for name in [Split::Test.images_file(), Split::Test.labels_file()] {
        let raw = gunzip(&std::fs::read(bundled().join(name)).unwrap());
        std::fs::write(dir.join(name.trim_end_matches(".gz")), raw).unwrap();
    }
    let a = Dataset::load(&dir, Split::Test, true).unwrap();
    let b = Dataset::load(&bundled(), Split::Test, true).unwrap();
    assert_eq!(a, b);
    // The train split is not there: the error names the directory and both file names.
    let msg = expect_err(
        Dataset::load(&dir, Split::Train, true),
        &dir,
        "train-images-idx3-ubyte.gz",
    );
    assert!(msg.contains("train-images-idx3-ubyte "), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checksum_mismatch_names_the_file() {
    let dir = scratch("checksum");
    std::fs::copy(
        bundled().join("t10k-images-idx3-ubyte.gz"),
        dir.join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    // A valid gzip of the right labels, but not the official bytes.
    let labels = gunzip(&std::fs::read(bundled().join("t10k-labels-idx1-ubyte.gz")).unwrap());
    let path = dir.join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&path, gzip(&labels)).unwrap();
    expect_err(
        Dataset::load(&dir, Split::Test, true),
        &path,
        "sha256 mismatch",
    );
    // Without verification it loads.
    assert_eq!(Dataset::load(&dir, Split::Test, false).unwrap().n, 10_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn data_dir_discovery() {
    assert_eq!(find_data_dir(Some(&bundled())).unwrap(), bundled());
    let missing = Path::new("/nonexistent/resnet-data");
    expect_err(find_data_dir(Some(missing)), missing, "no such directory");
    let empty = scratch("discovery");
    expect_err(find_data_dir(Some(&empty)), &empty, "no dataset files");
    if std::env::var_os("RESNET_DATA").is_none() {
        // Falls back to the bundled copy (relative to the current dir or the crate root).
        let found = find_data_dir(None).unwrap();
        assert!(
            found.join("t10k-labels-idx1-ubyte.gz").is_file(),
            "{}",
            found.display()
        );
    }
    let _ = std::fs::remove_dir_all(&empty);
}

// ---------------------------------------------------------------------------------------------------------------
// Resize against Pillow

#[test]
fn resize_matches_pillow_exactly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transforms.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names.iter().filter_map(|n| n.strip_suffix(".input")) {
        let input = st.tensor(&format!("{name}.input")).unwrap();
        let output = st.tensor(&format!("{name}.output")).unwrap();
        assert_eq!(input.dtype(), safetensors::Dtype::U8);
        assert_eq!(output.dtype(), safetensors::Dtype::U8);
        let (h, w) = (input.shape()[0], input.shape()[1]);
        let (oh, ow) = (output.shape()[0], output.shape()[1]);
        if let Some(size) = meta.get(&format!("{name}.size")) {
            assert_eq!(
                resize_shorter_side(h, w, size.parse().unwrap()),
                (oh, ow),
                "{name}: size rule"
            );
        }
        let ours = resize_like_pil(input.data(), h, w, oh, ow);
        if ours != output.data() {
            let diffs = ours
                .iter()
                .zip(output.data())
                .filter(|(a, b)| a != b)
                .count();
            panic!(
                "{name}: {h}×{w} → {oh}×{ow}: {diffs} of {} pixels differ from Pillow",
                ours.len()
            );
        }
        cases += 1;
    }
    assert!(cases >= 24, "only {cases} golden cases");
    assert!(bytes.len() < 300_000);
}

// ---------------------------------------------------------------------------------------------------------------
// Loader

/// `n` images of 2×3 whose pixels all equal the image's index (mod 256), labels `index % 10`.
fn toy(n: usize) -> Arc<Dataset> {
    let images = (0..n)
        .flat_map(|i| std::iter::repeat_n(i as u8, 6))
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Arc::new(Dataset::new(images, labels, 2, 3).unwrap())
}

#[test]
fn loader_batches_cover_every_index_once() {
    let loader = Loader::new(toy(10), 4, true, 7, TransformConfig::default()).unwrap();
    assert_eq!(loader.num_batches(), 3);
    let batches: Vec<_> = loader.epoch(0).collect();
    let sizes: Vec<usize> = batches.iter().map(|b| b.shape.n).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let mut seen = Vec::new();
    for b in &batches {
        assert_eq!(b.shape, resnet::Shape4::new(b.indices.len(), 1, 2, 3));
        assert_eq!(b.images.len(), b.shape.len());
        for (j, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[j], i % 10);
            assert!(b.images[j * 6..][..6]
                .iter()
                .all(|&v| v == i as f32 / 255.0));
        }
        seen.extend_from_slice(&b.indices);
    }
    assert_eq!(seen, loader.order(0));
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
}

#[test]
fn loader_order_depends_only_on_seed_and_epoch() {
    let n = 1000;
    let a = Loader::new(toy(n), 64, true, 42, TransformConfig::default()).unwrap();
    let b = Loader::new(toy(n), 64, true, 42, TransformConfig::default()).unwrap();
    let indices = |l: &Loader, e| l.epoch(e).flat_map(|b| b.indices).collect::<Vec<_>>();
    assert_eq!(indices(&a, 3), indices(&b, 3));
    assert_eq!(indices(&a, 3), a.order(3));
    assert_ne!(a.order(3), a.order(4));
    assert_ne!(a.order(0), (0..n).collect::<Vec<_>>());
    let c = Loader::new(toy(n), 64, true, 43, TransformConfig::default()).unwrap();
    assert_ne!(a.order(3), c.order(3));
    for e in 0..3 {
        let set: HashSet<usize> = indices(&a, e).into_iter().collect();
        assert_eq!(set.len(), n);
    }
    let plain = Loader::new(toy(n), 64, false, 42, TransformConfig::default()).unwrap();
    assert_eq!(indices(&plain, 5), (0..n).collect::<Vec<_>>());
}

#[test]
fn loader_resize_normalize_and_augment() {
    let test = Arc::new(
        Dataset::load(&bundled(), Split::Test, false)
            .unwrap()
            .take(300),
    );
    let cfg = TransformConfig {
        resize: Some(96),
        normalize: None,
        augment: false,
    };
    let loader = Loader::new(test.clone(), 128, false, 0, cfg).unwrap();
    assert_eq!(loader.image_size(), (96, 96));
    let b = loader.epoch(0).next().unwrap();
    assert_eq!(b.shape, resnet::Shape4::new(128, 1, 96, 96));
    let expect: Vec<f32> = resize_like_pil(test.image(5), 28, 28, 96, 96)
        .iter()
        .map(|&v| v as f32 / 255.0)
        .collect();
    assert_eq!(&b.images[5 * 9216..][..9216], &expect[..]);
    assert_eq!(
        loader.epoch(0).map(|b| b.shape.n).collect::<Vec<_>>(),
        vec![128, 128, 44]
    );

    let cfg = TransformConfig {
        resize: None,
        normalize: Some((0.5, 0.25)),
        augment: false,
    };
    let b = Loader::new(test.clone(), 8, false, 0, cfg)
        .unwrap()
        .batch(0, 0)
        .unwrap();
    assert_eq!(b.images[0], (test.image(0)[0] as f32 / 255.0 - 0.5) / 0.25);

    // Augmentation: reproducible from (seed, epoch, position), different across epochs, and the prefetching
    // iterator yields exactly what `batch` computes on the calling thread.
    let cfg = TransformConfig {
        resize: Some(96),
        normalize: None,
        augment: true,
    };
    let aug = Loader::new(test.clone(), 16, true, 9, cfg).unwrap();
    let from_thread: Vec<_> = aug.epoch(2).take(3).collect();
    for (i, b) in from_thread.iter().enumerate() {
        assert_eq!(b, &aug.batch(2, i).unwrap());
    }
    let again = Loader::new(test.clone(), 16, true, 9, cfg).unwrap();
    assert_eq!(from_thread[1], again.batch(2, 1).unwrap());
    assert_ne!(from_thread[0].images, aug.batch(3, 0).unwrap().images);
    let plain = Loader::new(
        test,
        16,
        true,
        9,
        TransformConfig {
            augment: false,
            ..cfg
        },
    )
    .unwrap();
    assert_ne!(from_thread[0].images, plain.batch(2, 0).unwrap().images);
    assert!(aug.batch(2, aug.num_batches()).is_none());
}

#[test]
fn loader_rejects_bad_arguments() {
    assert!(Loader::new(toy(3), 0, false, 0, TransformConfig::default()).is_err());
    let cfg = TransformConfig {
        normalize: Some((0.0, 0.0)),
        ..Default::default()
    };
    assert!(Loader::new(toy(3), 1, false, 0, cfg).is_err());
    let cfg = TransformConfig {
        resize: Some(0),
        ..Default::default()
    };
    assert!(Loader::new(toy(3), 1, false, 0, cfg).is_err());
    let empty = Loader::new(toy(0), 4, true, 0, TransformConfig::default()).unwrap();
    assert_eq!(empty.epoch(0).count(), 0);
}

#[test]
fn dropping_an_epoch_early_stops_its_thread() {
    let loader = Loader::new(toy(10_000), 1, true, 1, TransformConfig::default()).unwrap();
    for e in 0..20 {
        let mut it = loader.epoch(e);
        assert_eq!(it.len(), 10_000);
        it.next().unwrap();
    } // each Epoch is dropped with thousands of batches left; the test finishing proves the threads stopped
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: one clear error naming the file, never a panic

#[test]
fn empty_file() {
    let dir = scratch("empty");
    let path = dir.join("empty-idx1-ubyte");
    std::fs::write(&path, b"").unwrap();
    expect_err(read_idx(&path), &path, "empty file");
    let gz = dir.join("empty.gz");
    std::fs::write(&gz, gzip(b"")).unwrap();
    expect_err(read_idx(&gz), &gz, "too short for an IDX header");
    let missing = dir.join("missing-idx1-ubyte.gz");
    expect_err(read_idx(&missing), &missing, "cannot open");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_magic() {
    let dir = scratch("magic");
    let path = dir.join("bad");
    std::fs::write(&path, b"PK\x03\x04 not an idx file").unwrap();
    expect_err(read_idx(&path), &path, "wrong magic");
    // IDX, but int32 data (0x0c) instead of u8.
    let mut v = idx_bytes(&[2], &[0; 8]);
    v[2] = 0x0c;
    std::fs::write(&path, &v).unwrap();
    expect_err(read_idx(&path), &path, "unsupported IDX data type 0x0c");
    // Gzip of a non-IDX payload.
    std::fs::write(&path, gzip(b"\x01\x02\x03\x04hello")).unwrap();
    expect_err(read_idx(&path), &path, "wrong magic");
    // Right format, wrong rank.
    std::fs::write(&path, idx_bytes(&[4], &[1, 2, 3, 4])).unwrap();
    expect_err(read_images(&path), &path, "expected a 3-d IDX array");
    std::fs::write(&path, idx_bytes(&[1, 2, 2], &[1, 2, 3, 4])).unwrap();
    expect_err(read_labels(&path), &path, "expected a 1-d IDX array");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_gzip() {
    let dir = scratch("truncated-gz");
    let full = std::fs::read(bundled().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let path = dir.join("t10k-labels-idx1-ubyte.gz");
    // Cut in the middle of the deflate data, just before the 8-byte trailer, inside the trailer, inside the
    // gzip header: every cut is an error.
    for cut in [full.len() / 2, full.len() - 8, full.len() - 3, 5, 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let msg = read_labels(&path)
            .expect_err(&format!("cut at {cut}"))
            .to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "cut at {cut}: {msg}"
        );
    }
    // Raw IDX cut short.
    let raw = gunzip(&full);
    let rpath = dir.join("t10k-labels-idx1-ubyte");
    std::fs::write(&rpath, &raw[..5000]).unwrap();
    expect_err(
        read_labels(&rpath),
        &rpath,
        "truncated: header declares 10000 bytes, file holds 4992",
    );
    std::fs::write(&rpath, &raw[..6]).unwrap();
    expect_err(read_labels(&rpath), &rpath, "too short for an IDX header");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_gzip() {
    let dir = scratch("garbage-gz");
    let path = dir.join("train-images-idx3-ubyte.gz");
    let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    v.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&path, &v).unwrap();
    expect_err(read_images(&path), &path, "gzip");
    // A valid gzip of a valid IDX with a corrupted CRC.
    let mut good = gzip(&idx_bytes(&[3], &[1, 2, 3]));
    let n = good.len();
    good[n - 8] ^= 0xff;
    std::fs::write(&path, &good).unwrap();
    expect_err(read_idx(&path), &path, "gzip");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_dims_lying() {
    let dir = scratch("lying");
    let path = dir.join("train-images-idx3-ubyte");
    // 10^9 images of 28×28: beyond the size limit, refused from the header alone.
    std::fs::write(&path, idx_bytes(&[1_000_000_000, 28, 28], &[0; 100])).unwrap();
    expect_err(read_images(&path), &path, "limit");
    // 10^9 labels (under the limit) with 10 present: raw and gzip, refused without allocating 1 GB.
    let lpath = dir.join("train-labels-idx1-ubyte");
    std::fs::write(&lpath, idx_bytes(&[1_000_000_000], &[0; 10])).unwrap();
    expect_err(
        read_labels(&lpath),
        &lpath,
        "truncated: header declares 1000000000 bytes, file holds 10",
    );
    let gpath = dir.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&gpath, gzip(&idx_bytes(&[1_000_000_000], &[0; 10]))).unwrap();
    expect_err(
        read_labels(&gpath),
        &gpath,
        "truncated: header declares 1000000000 bytes",
    );
    // The brief's example: 60000×28×28 declared, 1234 bytes present.
    std::fs::write(&path, idx_bytes(&[60_000, 28, 28], &[7; 1234])).unwrap();
    expect_err(
        read_images(&path),
        &path,
        "truncated: header declares 60000×28×28 bytes, file holds 1234",
    );
    // More data than declared.
    std::fs::write(&path, idx_bytes(&[1, 2, 2], &[0; 5])).unwrap();
    expect_err(read_images(&path), &path, "trailing");
    std::fs::write(&gpath, gzip(&idx_bytes(&[3], &[0; 4]))).unwrap();
    expect_err(read_labels(&gpath), &gpath, "trailing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn label_image_mismatch_and_bad_labels() {
    let dir = scratch("mismatch");
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        idx_bytes(&[3, 2, 2], &[0; 12]),
    )
    .unwrap();
    let labels = dir.join("t10k-labels-idx1-ubyte");
    std::fs::write(&labels, idx_bytes(&[2], &[0, 1])).unwrap();
    expect_err(
        Dataset::load(&dir, Split::Test, true),
        &labels,
        "2 labels, but",
    );
    std::fs::write(&labels, idx_bytes(&[3], &[0, 1, 10])).unwrap();
    expect_err(
        Dataset::load(&dir, Split::Test, true),
        &labels,
        "label 10 at index 2",
    );
    std::fs::write(&labels, idx_bytes(&[3], &[0, 1, 9])).unwrap();
    assert_eq!(Dataset::load(&dir, Split::Test, true).unwrap().label(2), 9);
    let _ = std::fs::remove_dir_all(&dir);
}
