//! A steady-state training step (forward, loss, backward, Adam) allocates nothing, on the network alone and as
//! the training loop runs it (`Run::train_step`): every buffer is sized by the first step and reused. Counted by a global allocator that tallies every allocation and reallocation
//! made by any thread (rayon's workers included) while counting is switched on.
//!
//! The direct AVX2 kernels are what make the step allocation-free; the portable path (a CPU without AVX2, or
//! `RESNET_PORTABLE=1`) multiplies with the `gemm` crate, which allocates its packing buffers inside every
//! call, so there the test only reports.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use resnet::compiled::CompiledNet;
use resnet::data::Loader;
use resnet::dist::Local;
use resnet::kernels::conv::tile::cpu_supported;
use resnet::nn::{ArchName, Buffers, ResNet, ResNetConfig};
use resnet::optim::{OptimizerKind, OptimizerOptions};
use resnet::train::{Data, DataSettings, Run, RunSettings, Step, TrainConfig};
use resnet::Shape4;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Held by each test for its whole run: the counter sees every thread, so two tests must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` on a two-thread pool, as CI's machine has.
fn on_two_threads(f: impl FnOnce() + Send) {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(f);
}

/// Allocations and bytes made while `f` runs.
fn count<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (
        r,
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    )
}

#[test]
fn a_steady_state_training_step_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The chapter's network at 48×48 (every stage above 1×1, stride-2 blocks, the stem) and a 28×28 batch
    // (the last stage at 1×1, where dead taps are skipped), batch 8, two threads as in CI.
    on_two_threads(|| {
        // torchvision's resnet18 (RGB, so the NCHW → NHWC conversion runs, convs without bias, BN on the
        // downsample shortcuts) at 48×48.
        let torchvision18 = ResNetConfig::named(ArchName::Resnet18, 3, 10);
        // A narrow Bottleneck network (resnet50's layout, one block per stage): its 1×1 convolutions, stride 1
        // and the stride-2 downsample shortcuts, run on the pointwise register tiles.
        let bottleneck = ResNetConfig {
            layers: vec![1, 1, 1, 1],
            widths: vec![16, 32, 48, 64],
            ..ResNetConfig::named(ArchName::Resnet50, 3, 10)
        };
        for (config, side) in [
            (ResNetConfig::chapter(1, 10), 48),
            (ResNetConfig::chapter(1, 10), 28),
            (torchvision18, 48),
            (bottleneck, 64),
        ] {
            let name = config.name();
            let channels = config.in_channels;
            let mut net = ResNet::new(config, 0).unwrap();
            net.set_train(true);
            let xs = Shape4::new(8, channels, side, side);
            let x: Vec<f32> = (0..xs.len())
                .map(|i| (i * 37 % 101) as f32 / 101.0)
                .collect();
            let labels: Vec<usize> = (0..8).map(|i| i % 10).collect();
            let mut opt = OptimizerKind::Adam
                .build(&OptimizerOptions::default(), &net.param_lens())
                .unwrap();
            let mut step = |net: &mut ResNet| {
                net.forward(&x, xs, Buffers::Own).unwrap();
                let (loss, _) = net.loss(&labels).unwrap();
                net.backward(&x, false, None);
                opt.step_net(net, 1e-3);
                loss
            };
            let first = step(&mut net);
            let (second, allocations, bytes) = count(|| step(&mut net));
            assert!(first.is_finite() && second.is_finite());
            if cpu_supported() {
                assert_eq!(
                    (allocations, bytes),
                    (0, 0),
                    "{name} at {side}×{side}: the second training step made {allocations} allocations ({bytes} bytes)"
                );
            } else {
                eprintln!(
                    "portable path: the second step made {allocations} allocations ({bytes} bytes)"
                );
            }
        }
    });
}

#[test]
fn the_training_loops_step_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // `Run::train_step`, the body of the training loop (forward, loss, backward, the finite checks, the
    // optimizer), on a run created as `resnet train` creates one; the batch comes from the run's own loader.
    on_two_threads(|| {
        let dir = std::env::temp_dir().join(format!("resnet-alloc-free-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
        let chapter = TrainConfig::default();
        let config = TrainConfig {
            data: DataSettings {
                resize: Some(48),
                limit_train: Some(16),
                limit_test: Some(8),
                ..chapter.data
            },
            run: RunSettings {
                batch_size: 8,
                ..chapter.run
            },
            ..chapter
        };
        let data = Data::load(&bundled, false, &config, 64).unwrap();
        let (pipeline, _) = config.pipelines(&*data.train).unwrap();
        let loader = Loader::with_pipeline(data.train.clone(), 8, true, 0, pipeline).unwrap();
        // Prepared on this thread: no loader worker runs while the allocator counts.
        let batch = loader.batch(0, 0).unwrap().unwrap();
        let mut run = Run::create(&dir, config, Arc::new(Local::default())).unwrap();
        assert!(matches!(
            run.train_step(&batch, 1e-3).unwrap(),
            Step::Done { .. }
        ));
        let (step, allocations, bytes) = count(|| run.train_step(&batch, 1e-3).unwrap());
        assert!(matches!(step, Step::Done { .. }));
        if cpu_supported() {
            assert_eq!(
                (allocations, bytes),
                (0, 0),
                "the training loop's second step made {allocations} allocations ({bytes} bytes)"
            );
        }
        drop(run);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A compiled network's forward pass allocates nothing for a shape it was compiled for: plans, prepared weights,
/// arena and workspace are all made by `reserve`, before the first request; a smaller batch planned at load
/// reuses the same arena.
#[test]
fn a_compiled_forward_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    on_two_threads(|| {
        let bottleneck = ResNetConfig {
            layers: vec![1, 1, 1, 1],
            widths: vec![16, 32, 48, 64],
            ..ResNetConfig::named(ArchName::Resnet50, 3, 10)
        };
        for (config, side) in [
            (ResNetConfig::chapter(1, 10), 48),
            (ResNetConfig::named(ArchName::Resnet18, 3, 10), 64),
            (bottleneck, 64),
        ] {
            let name = config.name();
            let net = ResNet::new(config, 0).unwrap();
            let c = net.config.in_channels;
            let (big, small) = (Shape4::new(8, c, side, side), Shape4::new(3, c, side, side));
            let mut compiled = CompiledNet::new(&net, Some(big)).unwrap();
            compiled.reserve(small).unwrap();
            let x: Vec<f32> = (0..big.len())
                .map(|i| (i * 37 % 101) as f32 / 101.0)
                .collect();
            for xs in [big, small] {
                let (logits, allocations, bytes) =
                    count(|| compiled.forward(&x[..xs.len()], xs).unwrap().len());
                assert_eq!(logits, xs.n * 10);
                if cpu_supported() {
                    assert_eq!(
                        (allocations, bytes),
                        (0, 0),
                        "{name} at {xs}: the first forward made {allocations} allocations ({bytes} bytes)"
                    );
                }
            }
        }
    });
}
