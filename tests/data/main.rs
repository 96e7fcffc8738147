//! Data pipeline: the bundled Fashion-MNIST files, the resize against Pillow's golden output, the loader, and
//! bad input (every failure an `Err` naming the file, never a panic). No Python needed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use resnet::data::fashion_mnist::{sha256_file, verify_checksum, FILES};
use resnet::data::transforms::{resize_shorter_side, resize_to, Image};
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
        let ours = resize_to(&Image::new(input.data().to_vec(), h, w, 1).unwrap(), oh, ow).pixels;
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
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
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
    let indices = |l: &Loader, e| {
        l.epoch(e)
            .flat_map(|b| b.unwrap().indices)
            .collect::<Vec<_>>()
    };
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
    let b = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.shape, resnet::Shape4::new(128, 1, 96, 96));
    let expect: Vec<f32> = resize_to(
        &Image::new(test.image(5).to_vec(), 28, 28, 1).unwrap(),
        96,
        96,
    )
    .pixels
    .iter()
    .map(|&v| v as f32 / 255.0)
    .collect();
    assert_eq!(&b.images[5 * 9216..][..9216], &expect[..]);
    assert_eq!(
        loader
            .epoch(0)
            .map(|b| b.unwrap().shape.n)
            .collect::<Vec<_>>(),
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
        .unwrap()
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
    let from_thread: Vec<_> = aug.epoch(2).take(3).map(Result::unwrap).collect();
    for (i, b) in from_thread.iter().enumerate() {
        assert_eq!(b, &aug.batch(2, i).unwrap().unwrap());
    }
    let again = Loader::new(test.clone(), 16, true, 9, cfg).unwrap();
    assert_eq!(from_thread[1], again.batch(2, 1).unwrap().unwrap());
    assert_ne!(
        from_thread[0].images,
        aug.batch(3, 0).unwrap().unwrap().images
    );
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
    assert_ne!(
        from_thread[0].images,
        plain.batch(2, 0).unwrap().unwrap().images
    );
    assert!(aug.batch(2, aug.num_batches()).unwrap().is_none());
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
        it.next().unwrap().unwrap();
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

// ---------------------------------------------------------------------------------------------------------------
// Colour transforms against torchvision + Pillow (tests/golden/transforms_rgb.safetensors)

use resnet::data::folder::{stratified_split, FolderOptions as FolderOpts};
use resnet::data::image_file::decode_image;
use resnet::data::transforms::{
    center_crop, hflip_image, pad_crop, resize, resized_crop, to_tensor_chw,
};
use resnet::data::{ImageDataset, ImageFolder, Pipeline};

fn nums(s: &str) -> Vec<usize> {
    s.split(',').map(|v| v.parse().unwrap()).collect()
}

#[test]
fn colour_transforms_match_torchvision_exactly() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transforms_rgb.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut cases = 0;
    for name in names.iter().filter_map(|n| n.strip_suffix(".input")) {
        let input = st.tensor(&format!("{name}.input")).unwrap();
        let output = st.tensor(&format!("{name}.output")).unwrap();
        let op = &meta[&format!("{name}.op")];
        let (kind, args) = op.split_once(':').unwrap_or((op.as_str(), ""));
        let img = || {
            let s = input.shape();
            Image::new(input.data().to_vec(), s[0], s[1], s[2]).unwrap()
        };
        let ours: Image = match kind {
            "resize" => resize(&img(), args.parse().unwrap()),
            "center_crop" => {
                let a = nums(args);
                center_crop(&img(), a[0], a[1])
            }
            "resized_crop" => {
                let a = nums(args);
                resized_crop(&img(), a[0], a[1], a[2], a[3], a[4], a[5])
            }
            "pad_crop" => {
                let a = nums(args);
                pad_crop(&img(), a[0], a[1], a[2], a[3], a[4])
            }
            "hflip" => {
                let mut i = img();
                hflip_image(&mut i);
                i
            }
            "normalize" => {
                let (m, s) = args.split_once(';').unwrap();
                let parse = |t: &str| {
                    t.split(',')
                        .map(|v| v.parse::<f32>().unwrap())
                        .collect::<Vec<_>>()
                };
                let (m, s) = (parse(m), parse(s));
                let i = img();
                let mut dst = vec![0f32; i.pixels.len()];
                to_tensor_chw(&i, &mut dst, Some((&m, &s)));
                let want: Vec<f32> = output
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(output.shape(), &[i.c, i.h, i.w]);
                assert_eq!(dst, want, "{name}");
                cases += 1;
                continue;
            }
            "convert_L" | "convert_RGB" => {
                let c = if kind == "convert_L" { 1 } else { 3 };
                decode_image(input.data(), Path::new(name), c).unwrap()
            }
            _ => panic!("{name}: unknown op {op}"),
        };
        let s = output.shape();
        assert_eq!(
            (ours.h, ours.w, ours.c),
            (s[0], s[1], s[2]),
            "{name} ({op}): size"
        );
        if ours.pixels != output.data() {
            let diffs = ours
                .pixels
                .iter()
                .zip(output.data())
                .filter(|(a, b)| a != b)
                .count();
            panic!(
                "{name} ({op}): {diffs} of {} values differ from torchvision",
                ours.pixels.len()
            );
        }
        cases += 1;
    }
    assert!(cases >= 47, "only {cases} golden cases");
    assert!(bytes.len() < 200_000);
}

// ---------------------------------------------------------------------------------------------------------------
// CIFAR

/// A CIFAR record: label byte(s), then planes where pixel p of channel ch is `(seed + ch·7 + p) mod 256`.
fn cifar_record(labels: &[u8], seed: u8) -> Vec<u8> {
    let mut r = labels.to_vec();
    for ch in 0..3u32 {
        r.extend((0..1024u32).map(|p| (seed as u32 + ch * 7 + p) as u8));
    }
    r
}

#[test]
fn cifar10_reads_planar_records_as_interleaved_rgb() {
    use resnet::data::cifar::{load, Kind};
    let dir = scratch("cifar10");
    for b in 1..=5u8 {
        let bytes: Vec<u8> = (0..3u8)
            .flat_map(|k| cifar_record(&[(b + k) % 10], b * 10 + k))
            .collect();
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(&[9], 200)).unwrap();
    let train = load(&dir, Kind::Cifar10, true).unwrap();
    assert_eq!(
        (train.len(), train.channels(), train.image_size()),
        (15, 3, Some((32, 32)))
    );
    assert_eq!(train.classes()[0], "airplane");
    assert_eq!(train.label(4), 3); // batch 2, record 1: (2 + 1) % 10
    let img = train.image(4).unwrap();
    // Pixel (y=1, x=2) is plane position 34; record seed 21.
    let p = (32 + 2) * 3;
    assert_eq!(
        &img.pixels[p..p + 3],
        &[(21 + 34) as u8, (21 + 7 + 34) as u8, (21 + 14 + 34) as u8]
    );
    // Class names from batches.meta.txt.
    let names: String = (0..10).map(|i| format!("class {i}\n")).collect();
    std::fs::write(dir.join("batches.meta.txt"), format!("{names}\n")).unwrap();
    let test = load(&dir, Kind::Cifar10, false).unwrap();
    assert_eq!(
        (test.len(), test.label(0), test.classes()[9].as_str()),
        (1, 9, "class 9")
    );
    // Gray conversion as PIL's convert('L').
    let gray = test.clone().with_channels(1);
    let rgb = test.image(0).unwrap();
    assert_eq!(
        gray.image(0).unwrap().pixels[5],
        resnet::data::transforms::luma(rgb.pixels[15], rgb.pixels[16], rgb.pixels[17])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    use resnet::data::cifar::{load, Kind, Label};
    let dir = scratch("cifar100").join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let rec = |c, f, s| cifar_record(&[c, f], s);
    std::fs::write(
        dir.join("train.bin"),
        [rec(3, 99, 1), rec(19, 0, 2)].concat(),
    )
    .unwrap();
    std::fs::write(dir.join("test.bin"), rec(0, 42, 3)).unwrap();
    let fine_names: String = (0..100).map(|i| format!("f{i}\n")).collect();
    std::fs::write(dir.join("fine_label_names.txt"), fine_names).unwrap();
    let parent = dir.parent().unwrap();
    let fine = load(parent, Kind::Cifar100(Label::Fine), true).unwrap();
    assert_eq!(
        (fine.label(0), fine.label(1), fine.classes().len()),
        (99, 0, 100)
    );
    assert_eq!(fine.classes()[99], "f99");
    let coarse = load(parent, Kind::Cifar100(Label::Coarse), true).unwrap();
    assert_eq!(
        (coarse.label(0), coarse.label(1), coarse.classes().len()),
        (3, 19, 20)
    );
    assert_eq!(coarse.classes()[0], "coarse_0");
    assert_eq!(fine.image(1).unwrap(), coarse.image(1).unwrap());
    // Auto-detection through open_data.
    let splits = resnet::data::open_data(parent, &Default::default()).unwrap();
    assert_eq!(
        (splits.train.len(), splits.test.len(), splits.test.label(0)),
        (2, 1, 42)
    );
    let _ = std::fs::remove_dir_all(parent);
}

#[test]
fn cifar_wrong_length_and_bad_labels() {
    use resnet::data::cifar::{load, read_file, Kind, Label};
    let dir = scratch("cifar-bad");
    let path = dir.join("data_batch_1.bin");
    std::fs::write(&path, vec![0u8; 3073 * 2 + 100]).unwrap();
    expect_err(
        read_file(&path, Kind::Cifar10),
        &path,
        "6246 bytes is not a multiple of the 3073-byte CIFAR-10 record",
    );
    expect_err(
        load(&dir, Kind::Cifar10, true),
        &path,
        "not a multiple of the 3073-byte",
    );
    std::fs::write(&path, b"").unwrap();
    expect_err(read_file(&path, Kind::Cifar10), &path, "empty file");
    std::fs::write(&path, cifar_record(&[10], 0)).unwrap();
    expect_err(
        read_file(&path, Kind::Cifar10),
        &path,
        "record 0 has label 10",
    );
    let p100 = dir.join("train.bin");
    std::fs::write(&p100, vec![0u8; 3073]).unwrap();
    expect_err(
        read_file(&p100, Kind::Cifar100(Label::Fine)),
        &p100,
        "3074-byte CIFAR-100 record",
    );
    std::fs::write(&p100, cifar_record(&[20, 5], 0)).unwrap();
    expect_err(
        read_file(&p100, Kind::Cifar100(Label::Coarse)),
        &p100,
        "label 20",
    );
    let missing = dir.join("nothing");
    std::fs::create_dir_all(&missing).unwrap();
    expect_err(
        load(&missing, Kind::Cifar10, true),
        &missing,
        "no CIFAR-10 files",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------------------------
// Image folders

fn write_png(path: &Path, h: u32, w: u32, rgb: bool, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let n = (h * w) as usize;
    if rgb {
        let px: Vec<u8> = (0..n).flat_map(|i| [v, (i % 256) as u8, 255 - v]).collect();
        image::RgbImage::from_raw(w, h, px)
            .unwrap()
            .save_with_format(path, image::ImageFormat::Png)
            .unwrap();
    } else {
        let px: Vec<u8> = (0..n).map(|i| v.wrapping_add(i as u8)).collect();
        image::GrayImage::from_raw(w, h, px)
            .unwrap()
            .save_with_format(path, image::ImageFormat::Png)
            .unwrap();
    }
}

fn names_of(f: &ImageFolder) -> Vec<String> {
    f.files()
        .iter()
        .map(|p| p.strip_prefix(f.root()).unwrap().display().to_string())
        .collect()
}

#[test]
fn image_folder_follows_torchvision_rules() {
    let root = scratch("folder-rules");
    write_png(&root.join("b/x.png"), 4, 5, false, 1);
    write_png(&root.join("b/a.PNG"), 4, 5, false, 2); // upper-case extension counts
    write_png(&root.join("b/.hidden.png"), 4, 5, false, 3); // hidden files count
    write_png(&root.join("b/sub/z.png"), 4, 5, false, 4); // nested: still class b
    write_png(&root.join("b/sub b/y.png"), 4, 5, false, 5); // "sub b" < "sub" + "/": after "sub"? see below
    std::fs::write(root.join("b/notes.txt"), b"not an image").unwrap(); // other extensions ignored
    write_png(&root.join("A/q.png"), 4, 5, false, 6); // "A" < "b" (code points)
    write_png(&root.join("outside/o.png"), 6, 6, false, 7);
    std::os::unix::fs::symlink(root.join("outside"), root.join("c_link")).unwrap(); // a linked class folder
    std::fs::write(root.join("readme.png"), b"files in the root are ignored").unwrap();
    let f = ImageFolder::open(&root, &FolderOpts::default()).unwrap();
    assert_eq!(f.classes(), &["A", "b", "c_link", "outside"]);
    // Python: sorted(os.walk) orders folders "b" < "b/sub" < "b/sub b" ('/' is 0x2f, ' ' is 0x20 but the
    // comparison is of whole paths: "…/b/sub" is a prefix of "…/b/sub b").
    assert_eq!(
        names_of(&f),
        [
            "A/q.png",
            "b/.hidden.png",
            "b/a.PNG",
            "b/x.png",
            "b/sub/z.png",
            "b/sub b/y.png",
            "c_link/o.png",
            "outside/o.png"
        ]
    );
    assert_eq!(
        (0..f.len()).map(|i| f.label(i)).collect::<Vec<_>>(),
        [0, 1, 1, 1, 1, 1, 2, 3]
    );
    assert_eq!(
        (f.channels(), f.image_size(), f.is_cached()),
        (1, None, true)
    );
    let img = f.image(2).unwrap();
    assert_eq!((img.h, img.w, img.c, img.pixels[0]), (4, 5, 1, 2));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn image_folder_channels_and_cache() {
    let root = scratch("folder-channels");
    write_png(&root.join("gray/a.png"), 3, 3, false, 10);
    write_png(&root.join("color/b.png"), 3, 3, true, 20);
    for cache_mb in [0, 1024] {
        let opts = FolderOpts {
            cache_mb,
            ..Default::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        assert_eq!((f.channels(), f.is_cached()), (3, cache_mb > 0)); // one colour image: RGB
        let gray = f.image(1).unwrap();
        assert_eq!(&gray.pixels[..6], &[10, 10, 10, 11, 11, 11]); // gray replicated
        let opts = FolderOpts {
            channels: Some(1),
            cache_mb,
            ..Default::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        let c = f.image(0).unwrap();
        assert_eq!(
            (c.c, c.pixels[1]),
            (1, resnet::data::transforms::luma(20, 1, 235))
        );
    }
    let bad = FolderOpts {
        channels: Some(2),
        ..Default::default()
    };
    assert!(ImageFolder::open(&root, &bad)
        .unwrap_err()
        .to_string()
        .contains("1 or 3"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn folder_splits_from_dirs_and_from_a_fraction() {
    use resnet::data::open_splits;
    let dir = scratch("folder-splits");
    for (split, n) in [("train", 6), ("val", 2)] {
        for class in ["cat", "dog"] {
            for i in 0..n {
                write_png(
                    &dir.join(format!("{split}/{class}/{i}.png")),
                    2,
                    2,
                    false,
                    i as u8,
                );
            }
        }
    }
    let s = open_splits(&dir, &FolderOpts::default(), None, 0).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (12, 4));
    assert!(s.val_source.ends_with("val"), "{}", s.val_source);
    // A fraction of dir/train instead, reproducible and stratified.
    let a = open_splits(&dir, &FolderOpts::default(), Some(0.5), 7).unwrap();
    let b = open_splits(&dir, &FolderOpts::default(), Some(0.5), 7).unwrap();
    assert_eq!((a.train.len(), a.val.len()), (6, 6));
    let labels = |d: &dyn ImageDataset| {
        (0..d.len())
            .map(|i| (d.label(i), d.image(i).unwrap().pixels[0]))
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&*a.val), labels(&*b.val));
    assert_eq!(resnet::data::class_counts(&*a.val), [3, 3]);
    let (t, v) = stratified_split(&[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.25, 1).unwrap();
    assert_eq!((t.len(), v.len()), (10, 4));
    assert_ne!(
        stratified_split(&[0; 40], 0.5, 1).unwrap(),
        stratified_split(&[0; 40], 0.5, 2).unwrap()
    );
    // A single folder without train/: split with the default fraction.
    let one = open_splits(&dir.join("train"), &FolderOpts::default(), None, 0).unwrap();
    assert_eq!((one.train.len(), one.val.len()), (10, 2));
    // val_split outside (0, 1).
    for f in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let msg = open_splits(&dir, &FolderOpts::default(), Some(f), 0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("val_split must be a fraction strictly between 0 and 1"),
            "{msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn folder_bad_input_is_one_clear_error() {
    // No class folders.
    let root = scratch("folder-bad");
    std::fs::write(root.join("a.png"), b"x").unwrap();
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &root,
        "no class folders",
    );
    // An empty class (only a non-image file): torchvision's message.
    write_png(&root.join("full/a.png"), 2, 2, false, 0);
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("empty/a.txt"), b"x").unwrap();
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &root,
        "found no valid file for the classes empty",
    );
    std::fs::remove_dir_all(root.join("empty")).unwrap();
    // A symbolic link loop.
    std::os::unix::fs::symlink(root.join("full"), root.join("full/again")).unwrap();
    let again = root.join("full/again");
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &again,
        "symbolic link loop",
    );
    std::fs::remove_file(&again).unwrap();
    // Not an image at all (caught by the header scan), and a truncated PNG (caught when decoding).
    let garbage = root.join("full/garbage.png");
    std::fs::write(&garbage, b"this is not a png").unwrap();
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &garbage,
        "cannot read image",
    );
    std::fs::remove_file(&garbage).unwrap();
    write_png(&root.join("full/big.png"), 64, 64, true, 9);
    let big = std::fs::read(root.join("full/big.png")).unwrap();
    let cut = root.join("full/cut.png");
    std::fs::write(&cut, &big[..big.len() / 2]).unwrap();
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &cut,
        "cannot read image",
    );
    // Without the cache, the scan passes and the first access fails, naming the file.
    let nocache = FolderOpts {
        cache_mb: 0,
        ..Default::default()
    };
    let f = Arc::new(ImageFolder::open(&root, &nocache).unwrap());
    let i = f.files().iter().position(|p| *p == cut).unwrap();
    expect_err(f.image(i), &cut, "cannot read image");
    let loader = Loader::with_pipeline(f, 2, false, 0, Pipeline::imagenet(false, 8)).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error")
        .to_string();
    assert!(err.contains(&cut.display().to_string()), "{err}");
    // skip_bad: left out and counted.
    std::fs::write(&garbage, b"this is not a png").unwrap();
    for cache_mb in [0, 1024] {
        let opts = FolderOpts {
            skip_bad: true,
            cache_mb,
            ..Default::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        assert_eq!((f.len(), f.skipped().len()), (2, 2), "{:?}", f.skipped());
        assert!(f.skipped().iter().any(|s| s.contains("cut.png")));
    }
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------------------------
// Colour batches, workers, export

#[test]
fn colour_batches_are_nchw_and_independent_of_workers() {
    use resnet::data::ArrayDataset;
    let n = 37;
    let images: Vec<u8> = (0..n * 32 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let labels = (0..n as u32).map(|i| i % 10).collect();
    let classes = (0..10).map(|i| i.to_string()).collect();
    let ds = Arc::new(ArrayDataset::new(images, labels, (32, 32, 3), classes, "toy").unwrap());
    let plain = Loader::with_pipeline(ds.clone(), 8, false, 0, Pipeline::cifar(false)).unwrap();
    let b = plain.batch(0, 1).unwrap().unwrap();
    assert_eq!(b.shape, resnet::Shape4::new(8, 3, 32, 32));
    let img = ds.image(8).unwrap();
    assert_eq!(b.images[0], img.pixels[0] as f32 / 255.0); // R of pixel 0
    assert_eq!(b.images[1024], img.pixels[1] as f32 / 255.0); // G plane
    assert_eq!(b.images[1], img.pixels[3] as f32 / 255.0); // R of pixel 1
    let aug = |w| {
        let p = Pipeline::cifar(true).with_normalize(vec![0.5, 0.4, 0.3], vec![0.2, 0.2, 0.2]);
        let l = Loader::with_pipeline(ds.clone(), 8, true, 5, p)
            .unwrap()
            .with_workers(w);
        l.epoch(3).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let one = aug(1);
    assert_eq!(one.len(), 5);
    assert_eq!(one, aug(2));
    assert_eq!(one, aug(3));
    assert_ne!(one[0].images, plain.batch(0, 0).unwrap().unwrap().images);
}

#[test]
fn export_and_read_back_fashion_mnist() {
    let test = Dataset::load(&bundled(), Split::Test, false)
        .unwrap()
        .take(120);
    let dir = scratch("export");
    for rgb in [false, true] {
        let out = dir.join(if rgb { "rgb" } else { "gray" });
        assert_eq!(
            resnet::data::export_image_folder(&test, &out, rgb).unwrap(),
            120
        );
        let f = ImageFolder::open(&out, &FolderOpts::default()).unwrap();
        assert_eq!((f.len(), f.channels()), (120, if rgb { 3 } else { 1 }));
        let mut names = resnet::data::CLASS_NAMES.map(String::from).to_vec();
        names.sort();
        assert_eq!(f.classes(), names.as_slice());
        let mut prev: Option<(usize, usize)> = None;
        for i in 0..f.len() {
            // The file name is the original index; within a class the order is the original order.
            let stem = f.files()[i].file_stem().unwrap().to_str().unwrap();
            let orig: usize = stem.parse().unwrap();
            assert_eq!(
                f.classes()[f.label(i)],
                resnet::data::CLASS_NAMES[test.label(orig)]
            );
            let img = f.image(i).unwrap();
            let want = if rgb {
                test.image(orig).iter().flat_map(|&v| [v, v, v]).collect()
            } else {
                test.image(orig).to_vec()
            };
            assert_eq!(img.pixels, want, "{stem}");
            if let Some((l, o)) = prev {
                assert!(f.label(i) > l || (f.label(i) == l && orig > o));
            }
            prev = Some((f.label(i), orig));
        }
    }
    expect_err(
        resnet::data::export_image_folder(&test, &dir.join("gray"), false),
        &dir.join("gray"),
        "not empty",
    );
    // The loader's benchmark runs on it.
    let r = resnet::data::bench_loader(
        &dir.join("rgb"),
        &FolderOpts::default(),
        resnet::data::Preset::Imagenet,
        16,
        2,
        Some(40),
    )
    .unwrap();
    assert!(r.images >= 40 && r.images_per_s > 0.0, "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_data_and_presets_on_fashion_mnist() {
    use resnet::data::{open_data, pipelines, DataOptions, Format, NormalizeSpec, Preset};
    let s = open_data(&bundled(), &DataOptions::default()).unwrap();
    assert_eq!(
        (s.format, s.train.len(), s.test.len(), s.train.channels()),
        (Format::Idx, 60_000, 10_000, 1)
    );
    assert_eq!(s.train.classes()[9], "ankle boot");
    let (t, e) = pipelines(
        Preset::Chapter,
        Some(96),
        true,
        &NormalizeSpec::Auto,
        &*s.train,
    )
    .unwrap();
    let (m, sd) = t.normalize.clone().unwrap();
    assert_eq!(format!("{:.4} {:.4}", m[0], sd[0]), "0.2860 0.3530");
    assert_eq!(e.normalize, t.normalize);
    // The chapter preset through the general constructor gives the chapter loader's batches.
    let test = Arc::new(
        Dataset::load(&bundled(), Split::Test, false)
            .unwrap()
            .take(64),
    );
    let cfg = TransformConfig {
        resize: Some(96),
        normalize: Some((m[0], sd[0])),
        augment: true,
    };
    let old = Loader::new(test.clone(), 32, true, 3, cfg).unwrap();
    let new =
        Loader::with_pipeline(test.clone(), 32, true, 3, cfg.pipeline(28, 28).unwrap()).unwrap();
    assert_eq!(old.batch(1, 1).unwrap(), new.batch(1, 1).unwrap());
    // RGB copies of the IDX images; imagenet preset sizes.
    let rgb = DataOptions {
        channels: Some(3),
        ..Default::default()
    };
    let s = open_data(&bundled(), &rgb).unwrap();
    assert_eq!(s.test.image(0).unwrap().pixels[..3], [test.image(0)[0]; 3]);
    let (t, e) = pipelines(Preset::Imagenet, None, true, &NormalizeSpec::None, &*s.test).unwrap();
    let l = Loader::with_pipeline(s.test.clone(), 4, true, 0, t).unwrap();
    assert_eq!(
        l.batch(0, 0).unwrap().unwrap().shape,
        resnet::Shape4::new(4, 3, 224, 224)
    );
    let l = Loader::with_pipeline(s.test.clone(), 4, false, 0, e).unwrap();
    assert_eq!(l.image_size(), (224, 224));
    // Bad options.
    let bad = DataOptions {
        channels: Some(2),
        ..Default::default()
    };
    assert!(open_data(&bundled(), &bad)
        .unwrap_err()
        .to_string()
        .contains("1 or 3"));
    assert!("nope".parse::<Format>().is_err());
    assert!("cifar".parse::<Preset>().is_ok());
}
