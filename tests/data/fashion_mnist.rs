//! Fashion-MNIST in IDX files: the bundled files against the official checksums, the splits' counts and
//! statistics, uncompressed copies, data-directory discovery, and bad IDX input (empty, wrong magic, truncated
//! or garbage gzip, headers that lie, labels that do not match): one clear error naming the file, never a panic.

use std::io::Write;
use std::path::Path;

use resnet::data::fashion_mnist::{sha256_file, verify_checksum, FILES};
use resnet::data::{find_data_dir, read_idx, read_images, read_labels, Dataset, Split};

use crate::{bundled, expect_err, scratch};

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
