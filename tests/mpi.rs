//! Data-parallel training under `mpirun` (feature `mpi`; `.ci/run` installs OpenMPI and runs these): N ranks
//! train to the parameters of one process with the same global batch, a rank launched with other flags or
//! without readable data is refused at start, as is a job one of whose ranks never joins, a job whose rank is
//! killed stops within seconds with a resumable checkpoint, and every rank says who it is (tests/mpi_hosts.rs:
//! ranks on other hosts, cut off or frozen).
#![cfg(feature = "mpi")]

mod common;
use resnet::checkpoint;
use resnet::nn::{StateDict, StateTensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_resnet");

/// A narrow network on a small slice at 28×28, in batches of 25, which two ranks split 13 + 12 (uneven
/// shares), and three ranks 9 + 8 + 8; 200 training images unless `--limit-train` is given.
const SLICE: &[&str] = &[
    "--resize",
    "28",
    "--limit-test",
    "100",
    "--batch-size",
    "25",
    "--widths",
    "8,16,16,32",
    "--quiet",
];

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("resnet-mpi-test-", name)
}

/// `resnet --threads 1 train SLICE... EXTRA...` as argument strings.
fn train_args(extra: &[&str]) -> Vec<String> {
    let limit: &[&str] = match extra.contains(&"--limit-train") {
        true => &[],
        false => &["--limit-train", "200"],
    };
    ["--threads", "1", "train"]
        .iter()
        .chain(SLICE)
        .chain(limit)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null());
    cmd
}

/// `mpirun -np N resnet ARGS...`.
fn launch(np: usize, args: &[String]) -> Output {
    mpirun()
        .arg("-np")
        .arg(np.to_string())
        .arg(BIN)
        .args(args)
        .output()
        .expect("start mpirun (OpenMPI's openmpi-bin)")
}

/// `mpirun -np 1 resnet ARGS0... : -np 1 resnet ARGS1...`: two ranks launched with different arguments.
fn launch_two(args0: &[String], args1: &[String]) -> Output {
    mpirun()
        .args(["-np", "1", BIN])
        .args(args0)
        .args([":", "-np", "1", BIN])
        .args(args1)
        .output()
        .expect("start mpirun (OpenMPI's openmpi-bin)")
}

/// The same run as one process.
fn single(args: &[String]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null())
        .output()
        .expect("start the resnet binary")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expect_success(out: &Output, what: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Our own `error:` lines (mpirun adds its own banner, which is not ours to shape); asserts the job failed.
fn error_lines(out: &Output, what: &str) -> Vec<String> {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{stdout}\n{stderr}"
    );
    stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

fn model(dir: &Path) -> StateDict {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    checkpoint::deserialize(&bytes, "model").unwrap().0
}

/// `‖a − b‖ / ‖b − start‖` over every F32 value of the models: how far `a` is from `b` as a share of the update
/// that took `start` to `b`. Integer tensors (BN batch counters) of `a` and `b` must be equal.
fn difference_of_update(a: &StateDict, b: &StateDict, start: &StateDict) -> f64 {
    let squares = |x: &StateDict, y: &StateDict| -> f64 {
        x.iter()
            .zip(y)
            .map(|((_, tx), (_, ty))| match (tx, ty) {
                (StateTensor::F32 { data: p, .. }, StateTensor::F32 { data: q, .. }) => {
                    p.iter().zip(q).map(|(u, v)| ((u - v) as f64).powi(2)).sum()
                }
                _ => 0.0,
            })
            .sum()
    };
    assert!(a.len() == b.len() && b.len() == start.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        if !matches!(ta, StateTensor::F32 { .. }) {
            assert_eq!(ta, tb, "{ka}");
        }
    }
    (squares(a, b) / squares(b, start).max(1e-300)).sqrt()
}

/// The largest difference of any F32 tensor between two models, relative to that tensor's largest value; integer
/// tensors (BN batch counters) must be equal.
fn largest_difference(a: &StateDict, b: &StateDict) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((ka, ta), (kb, tb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        match (ta, tb) {
            (StateTensor::F32 { data: x, .. }, StateTensor::F32 { data: y, .. }) => {
                let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
                let diff = x
                    .iter()
                    .zip(y)
                    .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() as f64));
                worst = worst.max(diff / scale.max(1e-30));
            }
            (x, y) => assert_eq!(x, y, "{ka}"),
        }
    }
    worst
}

fn epoch_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| l.split(", time").next().unwrap().to_string())
        .collect()
}

#[test]
fn two_ranks_with_a_frozen_backbone_train_the_parameters_of_one_process() {
    // With the backbone frozen every batch norm uses its running statistics, so the ranks' sum of weighted
    // gradients is the global batch's gradient whatever their shares (13 + 12 here).
    let dir = scratch("frozen");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let extra = ["--epochs", "2", "--freeze-backbone", "--lr", "0.01"];
    let mut a = train_args(&extra);
    a.extend(["--out".into(), two.display().to_string()]);
    let stdout = expect_success(&launch(2, &a), "mpirun -np 2");
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("rank {rank} of 2 on ")),
            "rank {rank} did not log itself:\n{stdout}"
        );
    }
    let mut b = train_args(&extra);
    b.extend(["--out".into(), one.display().to_string()]);
    let single_out = expect_success(&single(&b), "one process");
    let diff = largest_difference(&model(&two), &model(&one));
    assert!(diff <= 1e-5, "largest difference {diff:e} of scale");
    // Rank 0 alone printed the epochs, with the same loss and accuracies as the single process.
    assert_eq!(epoch_lines(&stdout), epoch_lines(&single_out));
    assert_eq!(epoch_lines(&stdout).len(), 2);
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"allreduce_bytes_per_step\""),
        "{metrics}"
    );
}

#[test]
fn a_rank_launched_with_other_flags_is_refused_before_training() {
    let dir = scratch("mismatch").join("run");
    let mut a = train_args(&["--epochs", "1"]);
    a.extend(["--out".into(), dir.display().to_string()]);
    let mut b = a.clone();
    b.extend(["--seed".into(), "7".into()]);
    let out = launch_two(&a, &b);
    let errors = error_lines(&out, "ranks with different seeds");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("rank 1 on ")
            && errors[0].contains("training configuration or data differs from rank 0's"),
        "{}",
        errors[0]
    );
    assert!(!dir.join("checkpoint.safetensors").exists());
}

#[test]
fn a_rank_that_cannot_read_the_data_fails_the_job_at_start() {
    let root = scratch("nodata");
    let dir = root.join("run");
    let missing = root.join("no-such-data");
    let mut a = train_args(&["--epochs", "1"]);
    a.extend(["--out".into(), dir.display().to_string()]);
    let mut b = a.clone();
    b.extend(["--data".into(), missing.display().to_string()]);
    let out = launch_two(&a, &b);
    let errors = error_lines(&out, "a rank without data");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("rank 1 on ") && errors[0].contains("no such directory"),
        "{}",
        errors[0]
    );
    assert!(!dir.exists(), "the run directory was created");
}

#[test]
fn a_rank_that_never_joins_ends_the_job_at_start_with_one_line() {
    // Rank 1 starts five minutes late: rank 0 waits in MPI_Init for 3 s (--collective-timeout), then ends the job.
    let dir = scratch("late").join("run");
    let mut a = train_args(&["--epochs", "1", "--collective-timeout", "3"]);
    a.extend(["--out".into(), dir.display().to_string()]);
    let started = std::time::Instant::now();
    let out = mpirun()
        .args(["-np", "1", BIN])
        .args(&a)
        .args([
            ":",
            "-np",
            "1",
            "sh",
            "-c",
            "sleep 300; exec \"$0\" \"$@\"",
            BIN,
        ])
        .args(&a)
        .output()
        .expect("start mpirun (OpenMPI's openmpi-bin)");
    let errors = error_lines(&out, "a rank that never joins");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: rank 0 (pid ")
            && errors[0].contains("MPI did not start within 3 s (--collective-timeout)"),
        "{}",
        errors[0]
    );
    // Well before the late rank would have joined.
    assert!(started.elapsed().as_secs() < 120, "{:?}", started.elapsed());
    assert!(!dir.exists(), "the run directory was created");
}

#[test]
fn too_small_a_share_is_refused_with_the_batch_and_rank_count() {
    let dir = scratch("shares").join("run");
    // 203 images in batches of 25: the last batch of 3 leaves the second rank one image.
    let mut a = train_args(&["--epochs", "1", "--limit-train", "203"]);
    a.extend(["--out".into(), dir.display().to_string()]);
    let out = launch(2, &a);
    let errors = error_lines(&out, "2 ranks on a last batch of 3");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(
            "--batch-size 25 over 2 ranks leaves the last rank 1 image(s) of a 3-image batch"
        ),
        "{}",
        errors[0]
    );
}

/// With `--sync-bn` and all layers training: 16,32,32,64 channels at 32×32 (so the AVX2 kernels run), batches of
/// 50 that three ranks split 17 + 17 + 16, SGD with momentum at a small learning rate, 100 images.
fn sync_args(epochs: &str, sync: bool, out: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--threads",
        "1",
        "train",
        "--resize",
        "32",
        "--widths",
        "16,32,32,64",
        "--batch-size",
        "50",
        "--limit-train",
        "100",
        "--limit-test",
        "50",
        "--optimizer",
        "sgd",
        "--lr",
        "0.003",
        "--momentum",
        "0.9",
        "--quiet",
        "--epochs",
        epochs,
        "--out",
    ]
    .map(String::from)
    .to_vec();
    a.push(out.display().to_string());
    if sync {
        a.push("--sync-bn".into());
    }
    a
}

#[test]
fn sync_bn_ranks_train_the_parameters_of_one_process_and_resume_with_another_rank_count() {
    // Every batch norm sees the global batch, so after four steps three ranks hold the parameters of one
    // process, and so does a run of one epoch on two ranks resumed on three. This needs a well-conditioned
    // trajectory: training amplifies rounding differences, and on the configurations this replaced one process
    // with RESNET_PORTABLE=1 (other convolution kernels, equally exact) drifted from the default by up to 0.1 of
    // scale in four steps, as far as the ranks did (docs/results/mpi.md).
    let dir = scratch("syncbn");
    let (one, three, resumed, unsynced) = (
        dir.join("one"),
        dir.join("three"),
        dir.join("resumed"),
        dir.join("unsynced"),
    );
    let single_out = expect_success(&single(&sync_args("2", true, &one)), "one process");
    let stdout = expect_success(
        &launch(3, &sync_args("2", true, &three)),
        "mpirun -np 3 --sync-bn",
    );
    let diff = largest_difference(&model(&three), &model(&one));
    assert!(
        diff <= 1e-5,
        "three ranks: largest difference {diff:e} of scale"
    );
    assert_eq!(epoch_lines(&stdout), epoch_lines(&single_out));

    expect_success(
        &launch(2, &sync_args("1", true, &resumed)),
        "mpirun -np 2, epoch 1",
    );
    let start = model(&resumed);
    let resume = [
        "--threads",
        "1",
        "train",
        "--quiet",
        "--epochs",
        "2",
        "--resume",
    ]
    .map(String::from)
    .into_iter()
    .chain([resumed.display().to_string()])
    .collect::<Vec<_>>();
    let stdout = expect_success(&launch(3, &resume), "mpirun -np 3 --resume");
    assert!(stdout.contains("resuming "), "{stdout}");
    // Measured against the second epoch's own update: two ranks' first epoch leaves the parameters about 1e-7
    // from one process's, and on an AVX2-only Zen 3 that was enough to tip a max-pool or ReLU tie in the second
    // epoch (one element's gradient routed elsewhere): 4.9e-4 of the update, where rounding alone gives 3e-7 to
    // 6e-7 and a resume that lost the momentum buffers 5.7e-2.
    let diff = difference_of_update(&model(&resumed), &model(&one), &start);
    assert!(
        diff <= 5e-3,
        "resumed on 3 ranks: {diff:e} of the second epoch's update"
    );

    // Without --sync-bn each rank normalizes with its own share's statistics: another run.
    expect_success(
        &launch(2, &sync_args("2", false, &unsynced)),
        "mpirun -np 2 without --sync-bn",
    );
    let diff = largest_difference(&model(&unsynced), &model(&one));
    assert!(
        diff > 1e-3,
        "without --sync-bn: only {diff:e} of scale apart"
    );
}
#[test]
fn killing_a_rank_stops_the_job_within_seconds_and_the_checkpoint_resumes() {
    use std::time::{Duration, Instant};
    let dir = scratch("kill").join("run");
    let mut a = train_args(&["--epochs", "40"]);
    a.extend(["--out".into(), dir.display().to_string()]);
    let (mut child, rx) =
        common::spawn_with_lines(mpirun().args(["-np", "2", BIN]).args(&a), "mpirun");
    // Rank 1's pid from its start-up line, then wait for the first epoch's checkpoint.
    let (pid, epochs_seen) = common::rank1_pid_and_epochs(&rx, Duration::from_secs(120));
    let pid = pid.expect("rank 1 logged its pid");
    assert!(epochs_seen > 0, "no epoch finished in time");
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the job still runs 20 s after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped = killed.elapsed();
    assert!(!status.success());
    assert!(
        stopped < Duration::from_secs(10),
        "the job took {stopped:?} to stop"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("exited on signal 9"), "{stderr}");
    // The last checkpoint is intact: the run resumes from it and finishes.
    let epochs_done = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        (1..40).contains(&epochs_done),
        "{epochs_done} epochs logged"
    );
    let target = (epochs_done + 1).to_string();
    let resume = [
        "--threads",
        "1",
        "train",
        "--quiet",
        "--epochs",
        &target,
        "--resume",
    ]
    .map(String::from)
    .into_iter()
    .chain([dir.display().to_string()])
    .collect::<Vec<_>>();
    let stdout = expect_success(&launch(2, &resume), "resume after the kill");
    assert!(
        stdout.contains(&format!(
            "resuming {} after epoch {epochs_done} of {target}",
            dir.display()
        )),
        "{stdout}"
    );
    assert_eq!(epoch_lines(&stdout).len(), 1, "{stdout}");
}

#[test]
fn an_image_one_rank_cannot_decode_mid_run_fails_every_rank_with_its_name() {
    use std::time::{Duration, Instant};
    // 2 × 30 small PNGs decoded on access (--cache-mb 0), one of them cut short after its header. With seed 0 it
    // falls in rank 1's share of the fifth batch: rank 1 fails in the middle of the epoch, the step's allreduce
    // tells every rank, and the job ends with one line naming the file; no rank is left waiting in a collective.
    let root = scratch("broken");
    let photos = root.join("photos");
    let mut good = Vec::new();
    for (i, class) in ["cat", "dog"].iter().flat_map(|c| [c; 30]).enumerate() {
        let dir = photos.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = (0..16 * 16)
            .map(|p| ((p * 7 + i * 13) % 256) as u8)
            .collect();
        let path = dir.join(format!("{i:02}.png"));
        image::GrayImage::from_raw(16, 16, pixels)
            .unwrap()
            .save(&path)
            .unwrap();
        good.push(path);
    }
    let whole = std::fs::read(&good[41]).unwrap();
    std::fs::write(photos.join("dog/41-broken.png"), &whole[..whole.len() - 20]).unwrap();
    let args: Vec<String> = [
        "--threads",
        "1",
        "train",
        "--data",
        &photos.display().to_string(),
        "--cache-mb",
        "0",
        "--resize",
        "16",
        "--widths",
        "4,4",
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--out",
        &root.join("run").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut child = mpirun()
        .args(["-np", "2", BIN])
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the job still ran after 120 s: a rank waits for one that failed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let errors = error_lines(&out, "a broken image");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: rank 1 on ") && errors[0].contains("41-broken.png"),
        "{}",
        errors[0]
    );
    // Rank 0's progress lines (stderr is not a terminal) show that four steps ran before the failure.
    let (_, stderr) = text(&out);
    assert!(stderr.contains("epoch 1/3 batch 4/7"), "{stderr}");
    assert!(!stderr.contains("batch 5/7"), "{stderr}");
}

#[test]
fn gradient_buckets_summed_during_the_backward_pass_give_the_flat_buffers_parameters() {
    // 0.2 MiB buckets cut the narrow network's 2.8 MB of gradients into several allreduces, started as the
    // backward pass produces them; two ranks sum each value the same way either way, so the parameters match
    // bit for bit.
    let dir = scratch("buckets");
    let (flat, buckets) = (dir.join("flat"), dir.join("buckets"));
    let args = |out: &Path, extra: &[&str]| {
        let mut a: Vec<String> = [
            "--threads",
            "1",
            "train",
            "--resize",
            "28",
            "--widths",
            "16,32,64,128",
            "--batch-size",
            "50",
            "--limit-train",
            "300",
            "--limit-test",
            "100",
            "--epochs",
            "1",
            "--quiet",
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["--out".into(), out.display().to_string()]);
        a
    };
    expect_success(&launch(2, &args(&flat, &[])), "flat");
    expect_success(
        &launch(2, &args(&buckets, &["--bucket-mb", "0.2"])),
        "buckets",
    );
    assert_eq!(largest_difference(&model(&buckets), &model(&flat)), 0.0);
    let metrics = std::fs::read_to_string(buckets.join("metrics.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let n = v["dist"]["allreduces_per_step"].as_u64().unwrap();
    assert!(n >= 5, "{metrics}");
}

#[test]
fn a_bad_flag_is_reported_once_not_by_every_rank() {
    let args = ["train", "--epochs", "0"].map(String::from);
    let out = launch(2, &args);
    let errors = error_lines(&out, "--epochs 0 on two ranks");
    assert_eq!(errors, ["error: --epochs must be at least 1"]);
}
