//! Training end to end: the CI accuracy bar at 28×28, exact resume (library and CLI), the NaN guard, the run
//! directory refusal, and the metrics log and curve. Timings in the comments are from the 2-core dev machine.

mod common;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use resnet::checkpoint::deserialize;
use resnet::dist::{Collective, Local};
use resnet::nn::ResNetConfig;
use resnet::nn::{StateDict, StateTensor};
use resnet::train::{
    Data, DataSettings, EpochMetrics, OptimSettings, ProgressMode, Run, RunSettings, TrainConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_resnet");

/// The job of a single process, which every run of these tests is.
fn local() -> Arc<dyn Collective> {
    Arc::new(Local::default())
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
}

/// A fresh, empty directory for one test (unique per process and call).
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("resnet-train-test-", name)
}

/// A small, quick configuration for tests about mechanics (not accuracy): 256 training and 64 test images at
/// 28×28 on a narrow network.
fn small_config(epochs: usize) -> TrainConfig {
    let chapter = TrainConfig::default();
    TrainConfig {
        model: ResNetConfig {
            widths: vec![16, 32, 64, 128],
            ..chapter.model
        },
        data: DataSettings {
            resize: None,
            limit_train: Some(256),
            limit_test: Some(64),
            ..chapter.data
        },
        optim: OptimSettings {
            schedule: "cosine".parse().unwrap(),
            ..chapter.optim
        },
        run: RunSettings {
            epochs,
            batch_size: 32,
            ..chapter.run
        },
    }
}

/// The CLI flags matching `small_config` (without --epochs / --out).
const SMALL_FLAGS: &[&str] = &[
    "--resize",
    "28",
    "--batch-size",
    "32",
    "--schedule",
    "cosine",
    "--limit-train",
    "256",
    "--limit-test",
    "64",
    "--widths",
    "16,32,64,128",
    "--quiet",
];

/// Runs the binary with the bundled data found by default, no backtraces, in `cwd`.
fn resnet(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RESNET_DATA")
        .output()
        .expect("run the resnet binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a failed run: non-zero exit, `error: ` on stderr, no panic. Returns stderr.
fn expect_failure(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success\nstdout:\n{}\nstderr:\n{err}",
        text(&out.stdout)
    );
    assert!(err.contains("error: "), "{what}: no `error: ` line:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: panicked:\n{err}"
    );
    err
}

fn expect_success(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn load_sd(path: &Path) -> StateDict {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    deserialize(&bytes, &path.display().to_string()).unwrap().0
}

/// Asserts two state dicts hold the same keys, shapes and bit-identical values.
fn assert_bit_identical(a: &StateDict, b: &StateDict, what: &str) {
    let keys = |sd: &StateDict| sd.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(a), keys(b), "{what}: different keys");
    for ((k, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape(), "{what}: `{k}` shapes differ");
        match (x, y) {
            (StateTensor::F32 { data: p, .. }, StateTensor::F32 { data: q, .. }) => {
                if let Some(i) = (0..p.len()).find(|&i| p[i].to_bits() != q[i].to_bits()) {
                    panic!("{what}: `{k}`[{i}] differs: {} vs {}", p[i], q[i]);
                }
            }
            (StateTensor::I64 { data: p, .. }, StateTensor::I64 { data: q, .. }) => {
                assert_eq!(p, q, "{what}: `{k}` differs")
            }
            _ => panic!("{what}: `{k}` dtypes differ"),
        }
    }
}

fn metrics(dir: &Path) -> Vec<EpochMetrics> {
    let s = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics line `{l}`: {e}")))
        .collect()
}

/// metrics.jsonl: one JSON object per epoch with epoch, loss, train_acc, test_acc; curve.svg is an SVG.
fn check_run_files(dir: &Path, epochs: usize) {
    let s = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), epochs, "metrics.jsonl:\n{s}");
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {l}"));
        assert_eq!(o["epoch"].as_u64(), Some(i as u64 + 1), "{l}");
        for k in ["loss", "train_acc", "test_acc"] {
            let x = o
                .get(k)
                .and_then(|x| x.as_f64())
                .unwrap_or_else(|| panic!("no number `{k}` in {l}"));
            assert!(x.is_finite() && x >= 0.0, "{k} = {x} in {l}");
        }
        for k in ["train_acc", "test_acc"] {
            assert!(o[k].as_f64().unwrap() <= 1.0, "{l}");
        }
    }
    let svg = std::fs::read_to_string(dir.join("curve.svg")).unwrap();
    assert!(
        svg.starts_with("<svg"),
        "curve.svg starts {:?}",
        &svg[..40.min(svg.len())]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(dir.join("model.safetensors").is_file());
    assert!(dir.join("checkpoint.safetensors").is_file());
}

/// The CI bar: the chapter's full ResNet-18 trained from scratch on the first 2,000 training images at 28×28,
/// 2 epochs, tested on the first 1,000 test images.
///
/// Batch 32 with a cosine schedule: at batch 256 there are only 16 steps and at batch 64 with a constant lr the
/// BN running statistics still lag the weights (test acc 0.61 against train acc 0.78). Measured (2 threads, at
/// commit 587beb8): seed 0 → test acc 0.725 after epoch 1, 0.798 after epoch 2 (the kernels of the commit before
/// gave 0.688 and 0.786; seeds 1 and 2 there gave 0.732 and 0.781). About 25–35 s.
#[test]
fn ci_accuracy_full_network_28px() {
    let chapter = TrainConfig::default();
    let config = TrainConfig {
        data: DataSettings {
            resize: None,
            limit_train: Some(2000),
            limit_test: Some(1000),
            ..chapter.data
        },
        optim: OptimSettings {
            schedule: "cosine".parse().unwrap(),
            ..chapter.optim
        },
        run: RunSettings {
            epochs: 2,
            batch_size: 32,
            ..chapter.run
        },
        ..chapter
    };
    assert_eq!(
        config.model.widths,
        vec![64, 128, 256, 512],
        "the chapter's network"
    );
    let data = Data::load(&bundled(), true, &config, 1024).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (2000, 1000));
    let dir = scratch("ci");
    let mut run = Run::create(&dir, config, local()).unwrap();
    assert_eq!(run.net.num_params(), 11_178_378);
    let mut seen = Vec::new();
    run.train(&data, ProgressMode::Quiet, |m| {
        eprintln!("{}", m.line());
        seen.push(m.clone());
    })
    .unwrap();
    assert_eq!(seen.len(), 2);
    let last = &seen[1];
    assert!(
        last.test_acc >= 0.70,
        "test accuracy {:.3} below the 0.70 bar (measured 0.798 for seed 0)",
        last.test_acc
    );
    assert!(last.loss < seen[0].loss, "loss did not fall: {seen:?}");
    check_run_files(&dir, 2);
    for (logged, m) in metrics(&dir).iter().zip(&seen) {
        assert_eq!(logged.epoch, m.epoch);
        for (x, y) in [
            (logged.loss, m.loss),
            (logged.train_acc, m.train_acc),
            (logged.test_acc, m.test_acc),
        ] {
            assert!((x - y).abs() <= 1e-12, "metrics.jsonl {logged:?} vs {m:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Library: an interrupted run (1 epoch, then resumed to 2) ends bit-identical to an uninterrupted 2-epoch run:
/// model, BN statistics and optimizer state; its metrics log has both epochs and equal numbers.
#[test]
fn resume_matches_uninterrupted_run() {
    let config = small_config(2);
    let data = Data::load(&bundled(), true, &config, 1024).unwrap();

    let dir_a = scratch("resume-a");
    let mut a = Run::create(&dir_a, config.clone(), local()).unwrap();
    a.train(&data, ProgressMode::Quiet, |_| {}).unwrap();

    let dir_b = scratch("resume-b");
    let mut b = Run::create(&dir_b, small_config(1), local()).unwrap();
    b.train(&data, ProgressMode::Quiet, |_| {}).unwrap();
    assert_eq!(metrics(&dir_b).len(), 1);
    drop(b);
    let mut b = Run::resume(&dir_b, Some(2), local()).unwrap();
    assert_eq!(b.progress.epochs_done, 1);
    assert_eq!(b.config, config, "resume keeps the stored settings");
    b.train(&data, ProgressMode::Quiet, |_| {}).unwrap();

    assert_bit_identical(&a.net.state_dict(), &b.net.state_dict(), "in memory");
    assert_bit_identical(
        &load_sd(&dir_a.join("model.safetensors")),
        &load_sd(&dir_b.join("model.safetensors")),
        "model.safetensors",
    );
    // The checkpoints also carry the optimizer's moments.
    assert_bit_identical(
        &load_sd(&dir_a.join("checkpoint.safetensors")),
        &load_sd(&dir_b.join("checkpoint.safetensors")),
        "checkpoint.safetensors",
    );
    check_run_files(&dir_a, 2);
    check_run_files(&dir_b, 2);
    let (ma, mb) = (metrics(&dir_a), metrics(&dir_b));
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.epoch, x.loss, x.train_acc, x.test_acc),
            (y.epoch, y.loss, y.train_acc, y.test_acc),
            "metrics differ"
        );
    }

    // While `b` holds its directory, no other run may open it.
    let busy = Run::resume(&dir_b, None, local())
        .err()
        .expect("a second run on a busy directory");
    assert!(
        busy.to_string().contains("another `resnet train`"),
        "{busy}"
    );
    // Resuming a finished run trains nothing and changes nothing (once `b` has let go of the directory).
    drop(b);
    let before = snapshot(&dir_b);
    let mut c = Run::resume(&dir_b, None, local()).unwrap();
    c.train(&data, ProgressMode::Quiet, |_| {
        panic!("no epoch left to train")
    })
    .unwrap();
    assert_eq!(snapshot(&dir_b), before);

    for d in [dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// CLI: `train --epochs 1 --out D`, then `train --resume D --epochs 2`, equals `train --epochs 2` exactly.
#[test]
fn cli_resume_matches_uninterrupted_run() {
    let cwd = scratch("cli-resume");
    let (a, b) = (cwd.join("a"), cwd.join("b"));
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let args = |extra: &[&'static str], out: &str| -> Vec<String> {
        let mut v: Vec<String> = vec!["train".into()];
        v.extend(SMALL_FLAGS.iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(["--out".to_string(), out.to_string()]);
        v
    };
    let run = |v: Vec<String>| resnet(&v.iter().map(String::as_str).collect::<Vec<_>>(), &cwd);

    let out = expect_success(&run(args(&["--epochs", "2"], a_s)), "uninterrupted");
    assert!(out.contains("training on cpu"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("epoch ")).count(),
        2,
        "{out}"
    );

    let out = expect_success(&run(args(&["--epochs", "1"], b_s)), "first epoch");
    let line = out.lines().find(|l| l.starts_with("epoch 1, ")).unwrap();
    for part in ["loss ", "train acc ", "test acc ", "time ", " sec"] {
        assert!(line.contains(part), "chapter's epoch line: {line}");
    }
    let out = expect_success(
        &resnet(
            &["train", "--resume", b_s, "--epochs", "2", "--quiet"],
            &cwd,
        ),
        "resume",
    );
    assert!(out.contains("after epoch 1 of 2"), "{out}");
    assert!(out.contains("epoch 2, loss"), "{out}");
    assert!(!out.contains("epoch 1, loss"), "epoch 1 retrained:\n{out}");

    assert_bit_identical(
        &load_sd(&a.join("model.safetensors")),
        &load_sd(&b.join("model.safetensors")),
        "CLI model.safetensors",
    );
    // Not only equal tensors: equal files, which checksums, caches and content-addressed stores can tell apart.
    let sha = |p: PathBuf| format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()));
    for file in ["model.safetensors", "checkpoint.safetensors", "config.json"] {
        assert_eq!(
            sha(a.join(file)),
            sha(b.join(file)),
            "{file} of a resumed run and of an uninterrupted one"
        );
    }
    // metrics.jsonl: equal but for the clock's fields, and the resumed run kept epoch 1's measured time.
    let untimed = |dir: &PathBuf| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let m = v.as_object_mut().unwrap();
                assert!(m["time_sec"].as_f64().unwrap() > 0.0, "{l}");
                for timing in ["time_sec", "images_per_sec", "elapsed_sec"] {
                    m.remove(timing);
                }
                v
            })
            .collect()
    };
    assert_eq!(untimed(&a), untimed(&b), "metrics.jsonl without timings");
    check_run_files(&b, 2);

    // `--epochs 5` (the default's value) still extends a resumed run.
    let out = expect_success(
        &resnet(
            &["train", "--resume", b_s, "--epochs", "5", "--quiet"],
            &cwd,
        ),
        "resume to 5",
    );
    assert!(out.contains("after epoch 2 of 5"), "{out}");
    assert!(out.contains("epoch 5, loss"), "{out}");
    check_run_files(&b, 5);
    let _ = std::fs::remove_dir_all(&cwd);
}

/// An absurd learning rate stops training with a clear error naming epoch and batch, and keeps the checkpoint of
/// the last finished epoch byte for byte (library and CLI).
#[test]
fn nan_guard_keeps_last_good_checkpoint() {
    let mut config = small_config(1);
    config.optim.optimizer = resnet::optim::OptimizerKind::Sgd;
    config.optim.lr = 0.05;
    let data = Data::load(&bundled(), true, &config, 1024).unwrap();
    let dir = scratch("nan");
    let mut run = Run::create(&dir, config, local()).unwrap();
    run.train(&data, ProgressMode::Quiet, |_| {}).unwrap();
    drop(run);
    let before = snapshot(&dir);

    // Library: resume for a second epoch at lr 1e9.
    let mut run = Run::resume(&dir, Some(2), local()).unwrap();
    run.config.optim.lr = 1e9;
    let e = run
        .train(&data, ProgressMode::Quiet, |m| {
            panic!("diverging epoch finished: {m:?}")
        })
        .expect_err("training at lr 1e9 must fail")
        .to_string();
    eprintln!("{e}");
    for want in [
        "epoch 2",
        "batch ",
        "lower the learning rate",
        "checkpoint of epoch 1",
    ] {
        assert!(e.contains(want), "missing `{want}` in: {e}");
    }
    assert_eq!(snapshot(&dir), before, "files changed by the failed epoch");
    drop(run);
    assert_eq!(
        Run::resume(&dir, None, local())
            .unwrap()
            .progress
            .epochs_done,
        1
    );

    // CLI: the same run with the absurd rate stored in its checkpoint, resumed.
    let mut run = Run::resume(&dir, None, local()).unwrap();
    run.config.optim.lr = 1e9;
    run.save().unwrap();
    drop(run);
    let before = snapshot(&dir);
    let cwd = scratch("nan-cwd");
    let out = resnet(
        &[
            "train",
            "--resume",
            dir.to_str().unwrap(),
            "--epochs",
            "2",
            "--quiet",
        ],
        &cwd,
    );
    let err = expect_failure(&out, "resume at lr 1e9");
    eprintln!("{err}");
    for want in ["diverged", "epoch 2", "batch ", "lower the learning rate"] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert_eq!(
        snapshot(&dir),
        before,
        "files changed by the failed CLI run"
    );

    // CLI, fresh run: nothing finished, so no checkpoint appears.
    let fresh = cwd.join("fresh");
    let mut args = vec![
        "train",
        "--optimizer",
        "sgd",
        "--lr",
        "1e6",
        "--epochs",
        "1",
    ];
    args.extend_from_slice(SMALL_FLAGS);
    args.extend_from_slice(&["--out", fresh.to_str().unwrap()]);
    let err = expect_failure(&resnet(&args, &cwd), "sgd at lr 1e6");
    for want in ["diverged", "epoch 1", "batch ", "lower the learning rate"] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{err}"
    );
    assert!(!fresh.join("checkpoint.safetensors").exists());
    assert!(!fresh.join("model.safetensors").exists());

    for d in [dir, cwd] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `train --out D` on a directory holding a run refuses, naming --resume, and leaves every file as it was.
#[test]
fn run_dir_with_checkpoint_is_refused() {
    let dir = scratch("refuse");
    let mut run = Run::create(&dir, small_config(1), local()).unwrap();
    run.save().unwrap();
    drop(run);
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let before = snapshot(&dir);
    assert!(before.len() >= 5, "{:?}", before.keys());

    let e = Run::create(&dir, small_config(1), local())
        .err()
        .expect("second create must fail")
        .to_string();
    assert!(e.contains("already holds") && e.contains("--resume"), "{e}");
    assert_eq!(snapshot(&dir), before);

    let cwd = scratch("refuse-cwd");
    let mut args = vec!["train", "--epochs", "1"];
    args.extend_from_slice(SMALL_FLAGS);
    args.extend_from_slice(&["--out", dir.to_str().unwrap()]);
    let err = expect_failure(&resnet(&args, &cwd), "train --out existing run");
    assert!(
        err.contains("already holds")
            && err.contains("--resume")
            && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(snapshot(&dir), before, "refused run touched files");

    for d in [dir, cwd] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A run with the recipe ingredients that keep state or change the step (`--ema`, `--wd-skip-norm`,
/// `--warmup-epochs`, SGD with Nesterov momentum) resumes bit-exactly, and saves the weight average as its model.
#[test]
fn recipe_ingredients_resume_exactly_and_save_the_average() {
    let with_ingredients = |epochs| {
        let small = small_config(epochs);
        TrainConfig {
            optim: OptimSettings {
                optimizer: "sgd".parse().unwrap(),
                lr: 0.05,
                momentum: Some(0.9),
                nesterov: true,
                weight_decay: Some(5e-4),
                wd_skip_norm: true,
                warmup_epochs: 1.5,
                ema: Some(0.9),
                ..small.optim
            },
            data: DataSettings {
                augment: true,
                ..small.data
            },
            ..small
        }
    };
    let config = with_ingredients(3);
    let data = Data::load(&bundled(), true, &config, 1024).unwrap();

    let dir_a = scratch("ingredients-a");
    let mut a = Run::create(&dir_a, config.clone(), local()).unwrap();
    a.train(&data, ProgressMode::Quiet, |_| {}).unwrap();

    let dir_b = scratch("ingredients-b");
    let mut b = Run::create(&dir_b, with_ingredients(1), local()).unwrap();
    b.train(&data, ProgressMode::Quiet, |_| {}).unwrap();
    drop(b);
    let mut b = Run::resume(&dir_b, Some(3), local()).unwrap();
    assert_eq!(b.config, config, "resume keeps the stored settings");
    assert_eq!(
        b.ema.as_ref().map(|e| e.updates),
        Some(8),
        "one update per step"
    );
    b.train(&data, ProgressMode::Quiet, |_| {}).unwrap();

    assert_bit_identical(&a.net.state_dict(), &b.net.state_dict(), "raw weights");
    for file in ["model.safetensors", "checkpoint.safetensors"] {
        assert_bit_identical(
            &load_sd(&dir_a.join(file)),
            &load_sd(&dir_b.join(file)),
            file,
        );
    }
    // model.safetensors holds the average, not the raw weights; swapping it in gives that file's tensors.
    let saved = load_sd(&dir_a.join("model.safetensors"));
    assert_ne!(
        saved,
        a.net.state_dict(),
        "the average differs from the raw weights"
    );
    let ema = a.ema.as_mut().unwrap();
    ema.swap(&mut a.net);
    let averaged = a.net.state_dict();
    ema.swap(&mut a.net);
    assert_eq!(saved.len(), averaged.len());
    for (k, x) in &saved {
        let y = averaged.iter().find(|(name, _)| name == k).map(|(_, t)| t);
        assert_eq!(Some(x), y, "{k}");
    }
    // The warm-up: the first epoch's last step ran at 8/12 of the schedule's rate.
    let m = metrics(&dir_a);
    let schedule: resnet::optim::Schedule = "cosine".parse().unwrap();
    let expected = schedule.lr(0.05, 0, 7, 8, 3) * resnet::optim::warmup_factor(7, 12);
    assert_eq!(m[0].lr, expected as f64);
    assert!(m[1].elapsed_sec > m[0].elapsed_sec && m[0].elapsed_sec >= m[0].time_sec);
    for d in [dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--recipe fast` on a slice of the data: the settings are printed in full and stored, a flag overrides the
/// recipe, and `--target-acc` stops the run at the first evaluation that reaches it.
#[test]
fn cli_recipe_fast_runs_and_target_acc_stops_it() {
    let cwd = scratch("recipe-fast");
    let out_dir = cwd.join("run");
    let out = expect_success(
        &resnet(
            &[
                "train",
                "--recipe",
                "fast",
                "--limit-train",
                "512",
                "--limit-test",
                "128",
                "--val-split",
                "0.2",
                "--lr",
                "0.02",
                "--target-acc",
                "0.05",
                "--quiet",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &cwd,
        ),
        "train --recipe fast",
    );
    let settings = out
        .lines()
        .find(|l| l.starts_with("recipe fast: "))
        .unwrap_or_else(|| panic!("{out}"));
    for part in [
        "--epochs 6",
        "--optimizer sgd",
        "--stem small",
        "--widths 16,32,64,128",
        "--lr 0.02",
        "--label-smoothing 0.1",
        "--tta=false",
    ] {
        assert!(settings.contains(part), "{part} in {settings}");
    }
    assert!(
        out.contains("training on cpu") && out.contains("validation images"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("epoch ")).count(),
        1,
        "stops after epoch 1:\n{out}"
    );
    assert!(
        out.contains("reached --target-acc 0.05 at epoch 1"),
        "{out}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["recipe"], "fast");
    assert_eq!(config["target_acc"], 0.05);
    assert_eq!(metrics(&out_dir).len(), 1);
    let _ = std::fs::remove_dir_all(&cwd);
}

/// A run written before the configuration was nested resumes: `tests/golden/flat_run` is the run directory
/// that the code of commit 3841346 wrote (`resnet --threads 1 train --recipe best --epochs 1 --batch-size 32
/// --widths 2,2,2,2 --arch resnet18 --zero-init-residual --limit-train 64 --limit-test 32 --seed 2 --ema 0.9
/// --target-acc 0.99 --freeze-until 0 --sync-bn --channels 3`), its `config.json` in the flat layout. Its
/// network is the one that run built, every setting is the one it stored and printed, and it trains on.
#[test]
fn a_run_stored_in_the_flat_layout_resumes() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/flat_run");
    let dir = scratch("flat");
    for f in [
        "checkpoint.safetensors",
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
    ] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    let model = std::fs::read(golden.join("model.safetensors")).unwrap();
    let (_, meta) = deserialize(&model, "model.safetensors").unwrap();
    let built = resnet::checkpoint::parse_arch(&meta["resnet.arch"]).unwrap();
    let flat: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden.join("config.json")).unwrap()).unwrap();

    let run = Run::resume(&dir, None, local()).unwrap();
    assert_eq!(run.config.model, built, "the network the run built");
    assert_eq!(
        serde_json::from_value::<TrainConfig>(flat.clone()).unwrap(),
        run.config,
        "config.json and the checkpoint hold the same configuration"
    );
    // Through the text, as stored (an f32 turned straight into a JSON value would carry its f64 digits).
    let nested: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&run.config).unwrap()).unwrap();
    let network = [
        "arch",
        "widths",
        "layers",
        "stem",
        "zero_init_residual",
        "in_channels",
    ];
    for (key, value) in flat.as_object().unwrap() {
        if !network.contains(&key.as_str()) {
            assert_eq!(&nested[key], value, "`{key}`");
        }
    }
    assert_eq!(
        run.config.settings_flags(),
        "--epochs 1 --batch-size 32 --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov=true --weight-decay 0.0005 \
         --wd-skip-norm=true --schedule onecycle:0.3:25:10000 --warmup-epochs 0 --resize 28 --augment=true \
         --normalize=true --stem small --widths 2,2,2,2 --label-smoothing 0.1 --random-erasing 0.5 --ema 0.9 \
         --tta=true",
        "what the run printed"
    );
    drop(run);

    let mut run = Run::resume(&dir, Some(2), local()).unwrap();
    let data = Data::load(&bundled(), true, &run.config, 1024).unwrap();
    run.train(&data, ProgressMode::Quiet, |_| {}).unwrap();
    assert_eq!(run.progress.epochs_done, 2);
    assert_eq!(metrics(&dir).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
