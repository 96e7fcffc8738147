//! Image folders: torchvision's `ImageFolder` rules (class order, extensions, hidden files, nesting, links),
//! channels and the cache, train/val splits (from folders or a stratified fraction), bad files (one clear error
//! naming the file, or skipped and counted), and the Fashion-MNIST export read back as a folder.

use std::path::Path;
use std::sync::Arc;

use resnet::data::folder::{stratified_split, FolderOptions as FolderOpts};
use resnet::data::{Dataset, ImageDataset, ImageFolder, Loader, Pipeline, Split};

use crate::{bundled, expect_err, scratch};

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

/// `ImageFolder::open(root, opts)` on another thread: an error if it has not returned within a minute (a FIFO
/// opened for reading waits for a writer, forever).
fn open_within_a_minute(root: &Path, opts: FolderOpts) -> resnet::Result<ImageFolder> {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(ImageFolder::open(&root, &opts));
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("ImageFolder::open blocked")
}

#[test]
fn a_fifo_named_like_an_image_is_refused_or_skipped() {
    let root = scratch("fifo");
    for (i, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        write_png(&root.join(format!("{class}/{i}.png")), 4, 4, false, 9);
    }
    let fifo = root.join("dog/x.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    expect_err(
        open_within_a_minute(&root, FolderOpts::default()),
        &fifo,
        "is not a regular file (a FIFO)",
    );
    for cache_mb in [0, 1024] {
        let opts = FolderOpts {
            skip_bad: true,
            cache_mb,
            ..Default::default()
        };
        let f = open_within_a_minute(&root, opts).unwrap();
        assert_eq!((f.len(), f.skipped().len()), (2, 1), "{:?}", f.skipped());
        assert!(f.skipped()[0].contains("x.png: cannot read image: is not a regular file"));
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A 160×120 RGB JPEG written by the `image` crate, busy enough that most of its bytes are the scan's (cut in
/// half, its headers are whole).
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        let v = (x * 7919 + y * 104_729) % 251;
        image::Rgb([v as u8, (v * 3 % 256) as u8, ((x + y) * 3 % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn a_truncated_jpeg_is_refused_or_skipped() {
    use resnet::data::image_file::decode_image;
    // Whole JPEGs decode: ours, with bytes after the end-of-image marker, and the fuzz seeds.
    let full = jpeg();
    assert!(full.ends_with(&[0xff, 0xd9]));
    let origin = Path::new("a.jpg");
    assert_eq!(decode_image(&full, origin, 3).unwrap().w, 160);
    let padded = [&full[..], &[0u8; 16]].concat();
    decode_image(&padded, origin, 3).unwrap();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/image");
    for seed in ["gray.jpg", "rgb.jpg"] {
        decode_image(&std::fs::read(seeds.join(seed)).unwrap(), origin, 1).unwrap();
    }
    // Cut anywhere before the end-of-image marker (in half, or just that marker missing): refused, as Pillow
    // refuses it (the decoder itself fills in what is missing and succeeds).
    for cut in [full.len() / 2, full.len() - 2] {
        // (Decoded, the image would be its size; not its pixels, which would fill the failure message.)
        let got = decode_image(&full[..cut], origin, 3).map(|img| (img.w, img.h));
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err(
                "a.jpg: cannot read image: truncated JPEG (the data ends before its end-of-image marker)"
                    .to_string()
            ),
            "cut at {cut} of {} bytes",
            full.len()
        );
    }
    // In an image folder: an error naming it, or with skip_bad left out and counted.
    let root = scratch("cut-jpeg");
    for (i, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::write(root.join(format!("{class}/{i}.jpg")), &full).unwrap();
    }
    let cut = root.join("dog/cut.jpg");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    expect_err(
        ImageFolder::open(&root, &FolderOpts::default()),
        &cut,
        "truncated JPEG",
    );
    for cache_mb in [0, 1024] {
        let opts = FolderOpts {
            skip_bad: true,
            cache_mb,
            ..Default::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        assert_eq!((f.len(), f.skipped().len()), (2, 1), "{:?}", f.skipped());
        assert!(f.skipped()[0].contains("cut.jpg: cannot read image: truncated JPEG"));
    }
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------------------------
// Export to a folder, read back

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
