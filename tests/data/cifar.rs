//! CIFAR-10 and CIFAR-100 binary files: planar records read as interleaved RGB, class names, fine and coarse
//! labels, auto-detection through `open_data`, and wrong lengths or labels as one clear error naming the file.

use resnet::data::ImageDataset;

use crate::{expect_err, scratch};

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
    // A name file that is not a regular file (`/dev/zero` never ends) is refused, by its name.
    std::fs::remove_file(dir.join("batches.meta.txt")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("batches.meta.txt")).unwrap();
    expect_err(
        load(&dir, Kind::Cifar10, false),
        &dir.join("batches.meta.txt"),
        "is not a regular file (a character device)",
    );
    std::fs::remove_file(dir.join("batches.meta.txt")).unwrap();
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
