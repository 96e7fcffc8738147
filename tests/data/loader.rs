//! The loader: every index once per epoch, an order that depends only on (seed, epoch), resize, normalize and
//! augmentation (reproducible, the same on the prefetch thread and the caller's), bad arguments, early drops,
//! colour batches independent of the number of workers, and `open_data` with its presets on Fashion-MNIST.

use std::collections::HashSet;
use std::sync::Arc;

use resnet::data::transforms::{resize_to, Image};
use resnet::data::{Dataset, ImageDataset, Loader, Pipeline, Split, TransformConfig};

use crate::bundled;

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
// Colour batches, workers

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

// ---------------------------------------------------------------------------------------------------------------
// open_data and the presets

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
    // `--resize 28` on Fashion-MNIST's 28×28 images (a resize step since every value is honoured) gives the
    // batches the run without a resize step gave, augmented or not.
    for augment in [false, true] {
        let batches = |size: Option<usize>| {
            let (t, e) =
                pipelines(Preset::Chapter, size, augment, &NormalizeSpec::None, &*test).unwrap();
            let t = Loader::with_pipeline(test.clone(), 16, true, 5, t).unwrap();
            let e = Loader::with_pipeline(test.clone(), 16, false, 5, e).unwrap();
            (t.batch(2, 1).unwrap(), e.batch(0, 3).unwrap())
        };
        assert_eq!(batches(Some(28)), batches(None), "augment {augment}");
    }
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
