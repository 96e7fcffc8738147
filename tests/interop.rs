//! Checkpoints between PyTorch and us: key names, order, layouts and dtypes of the chapter's state dict, a
//! PyTorch-written file through a save / load round trip, bad files, and (when `RESNET_PYTORCH_FILE` is set)
//! the full chapter network written by PyTorch, with its logits.
//!
//! The other direction — our file loaded by PyTorch with `strict=True` — needs Python and torch, so it is
//! checked by `tools/check_pytorch_interop.py` (see its docstring); `tests/golden/pytorch_chapter_keys.txt`,
//! written by that tool's `--write-keys`, pins PyTorch's own order of the chapter net's state dict here.

mod common;
use common::{golden_path, scaled_max_diff};
use resnet::checkpoint::{self, deserialize, save_model, serialize, META_ARCH};
use resnet::model_file::ModelFile;
use resnet::nn::{resnet18, Buffers, ResNetConfig, StateDict, StateTensor};
use resnet::Shape4;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const SMALL_PYTORCH_FILE: &str = "small_net_state_pytorch.safetensors";

/// A scratch directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("resnet-interop-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_sd(path: &Path) -> (StateDict, BTreeMap<String, String>) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    deserialize(&bytes, &path.display().to_string()).unwrap()
}

/// `tests/golden/pytorch_chapter_keys.txt`: `(key, dtype, shape)` of the chapter net's `state_dict()`, in order.
fn pytorch_chapter_layout() -> Vec<(String, String, Vec<usize>)> {
    let path = golden_path("pytorch_chapter_keys.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (python3 tools/check_pytorch_interop.py --write-keys)",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad line `{l}`");
            let dims = f[2].trim_start_matches('[').trim_end_matches(']');
            let shape = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().unwrap())
                .collect();
            (f[0].to_string(), f[1].to_string(), shape)
        })
        .collect()
}

fn keys(sd: &StateDict) -> Vec<&str> {
    sd.iter().map(|(k, _)| k.as_str()).collect()
}

fn sorted(sd: &StateDict) -> StateDict {
    let mut s = sd.clone();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

fn set(sd: &mut StateDict, key: &str, t: StateTensor) {
    sd.iter_mut()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no key {key}"))
        .1 = t;
}

/// Writes `bytes` under `dir` and returns the error message of loading it (panics if it loads).
fn load_err(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    match ModelFile::load(&path).and_then(|f| f.network()) {
        Ok(_) => panic!("{name}: a bad file loaded"),
        Err(e) => {
            let msg = e.to_string();
            println!("{name}: {msg}");
            assert!(
                msg.contains(&path.display().to_string()),
                "{name}: the error should name the file: {msg}"
            );
            msg
        }
    }
}

// ------------------------------------------------------------------------------------------- layout, round trip

#[test]
fn chapter_state_dict_layout_matches_pytorch() {
    let want = pytorch_chapter_layout();
    let sd = resnet18(1, 10, 0).state_dict();
    assert_eq!(sd.len(), 127);
    assert_eq!(want.len(), sd.len(), "number of state-dict entries");
    for ((k, t), (wk, wd, ws)) in sd.iter().zip(&want) {
        assert_eq!(
            (k.as_str(), t.dtype_name(), t.shape()),
            (wk.as_str(), wd.as_str(), ws.as_slice()),
            "state-dict entry (PyTorch's order)"
        );
    }
}

#[test]
fn pytorch_small_file_round_trips_through_save_model() {
    let src = golden_path(SMALL_PYTORCH_FILE);
    let (pt_sd, pt_meta) = read_sd(&src);
    assert!(!pt_meta.contains_key(META_ARCH));
    let net = ModelFile::load(&src).unwrap().network().unwrap();
    assert_eq!(
        net.config,
        ResNetConfig {
            widths: vec![4, 8, 8, 16],
            layers: vec![2, 2, 2, 2],
            ..ResNetConfig::chapter(1, 10)
        },
        "architecture inferred from the keys"
    );

    // Our state dict: PyTorch's key names in PyTorch's order (same names as the chapter net: only widths differ).
    let ours = net.state_dict();
    let order: Vec<String> = pytorch_chapter_layout()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys(&ours), order);
    assert_eq!(
        keys(&ours)[..12],
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "resnet_block1.0.conv1.weight",
            "resnet_block1.0.conv1.bias",
            "resnet_block1.0.conv2.weight",
            "resnet_block1.0.conv2.bias",
            "resnet_block1.0.bn1.weight",
        ]
    );
    // Loading kept every value bit for bit (conv weights went OIHW → HWIO → OIHW).
    assert_eq!(sorted(&ours), pt_sd);

    // Save, reread the raw file, reload.
    let dir = TempDir::new("round-trip");
    let out = dir.join("model.safetensors");
    save_model(&out, &net, &BTreeMap::new()).unwrap();
    let (saved_sd, saved_meta) = read_sd(&out);
    assert_eq!(
        saved_sd, pt_sd,
        "the saved file holds exactly PyTorch's tensors"
    );
    // The description as JSON; files of earlier versions stored `in,classes;widths;blocks` and still load.
    let stored = saved_meta
        .get(META_ARCH)
        .expect("the architecture is stored");
    assert!(stored.starts_with('{'), "{stored}");
    assert_eq!(checkpoint::parse_arch(stored).unwrap(), net.config);
    assert_eq!(
        checkpoint::parse_arch("1,10;4,8,8,16;2,2,2,2").unwrap(),
        net.config
    );
    assert_eq!(saved_meta.get("format").map(String::as_str), Some("pt"));
    let counters: Vec<&StateTensor> = saved_sd
        .iter()
        .filter(|(k, _)| k.ends_with(".num_batches_tracked"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(counters.len(), 1 + 8 * 2, "one per batch norm");
    for t in counters {
        assert!(
            matches!(t, StateTensor::I64 { shape, data } if shape.is_empty() && data.len() == 1),
            "num_batches_tracked must be a 0-d I64 as PyTorch writes it, got {t:?}"
        );
    }
    let again = ModelFile::load(&out).unwrap().network().unwrap();
    assert_eq!(again.config, net.config);
    assert_eq!(
        again.state_dict(),
        ours,
        "reloaded state dict (values and order)"
    );
}

// ------------------------------------------------------------------------------------------- bad files

/// The small PyTorch file's state dict, its bytes, and a scratch dir.
fn bad_file_setup(tag: &str) -> (StateDict, Vec<u8>, TempDir) {
    let src = golden_path(SMALL_PYTORCH_FILE);
    let bytes = fs::read(&src).unwrap();
    let (sd, _) = deserialize(&bytes, SMALL_PYTORCH_FILE).unwrap();
    (sd, bytes, TempDir::new(tag))
}

fn no_meta() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn truncated_files_are_rejected() {
    let (_, bytes, dir) = bad_file_setup("truncated");
    for (name, len) in [
        ("empty", 0),
        ("len-only", 4),
        ("half-header", 100),
        ("half-data", bytes.len() / 2),
        ("last-byte-missing", bytes.len() - 1),
    ] {
        let msg = load_err(&dir, name, &bytes[..len]);
        assert!(
            msg.contains("not a valid safetensors file")
                || msg.contains("truncated")
                || msg.contains("invalid"),
            "{name}: {msg}"
        );
    }
    let mut garbage = bytes.clone();
    garbage[8..16].copy_from_slice(b"!!!!!!!!"); // inside the JSON header
    let msg = load_err(&dir, "garbage-header", &garbage);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn extra_key_is_rejected() {
    let (mut sd, _, dir) = bad_file_setup("extra");
    sd.push((
        "resnet_block1.0.bn1.extra".into(),
        StateTensor::F32 {
            shape: vec![4],
            data: vec![0.0; 4],
        },
    ));
    let msg = load_err(&dir, "extra", &serialize(&sd, &no_meta()).unwrap());
    assert!(msg.contains("resnet_block1.0.bn1.extra"), "{msg}");
    assert!(msg.contains("unexpected"), "{msg}");
}

#[test]
fn missing_key_is_rejected() {
    let (mut sd, _, dir) = bad_file_setup("missing");
    sd.retain(|(k, _)| k != "resnet_block3.0.bn2.running_var");
    let msg = load_err(&dir, "missing", &serialize(&sd, &no_meta()).unwrap());
    assert!(msg.contains("resnet_block3.0.bn2.running_var"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn wrong_shape_is_rejected() {
    let (mut sd, _, dir) = bad_file_setup("shape");
    // Same number of elements, different shape: only the shape check can catch it.
    set(
        &mut sd,
        "resnet_block2.0.conv2.weight",
        StateTensor::F32 {
            shape: vec![8, 8, 1, 9],
            data: vec![0.0; 8 * 8 * 9],
        },
    );
    let msg = load_err(&dir, "shape", &serialize(&sd, &no_meta()).unwrap());
    assert!(msg.contains("resnet_block2.0.conv2.weight"), "{msg}");
    assert!(msg.contains("[8, 8, 1, 9]"), "{msg}");

    // With our arch metadata the architecture is not inferred, so even the classifier's shape is checked:
    // a transposed fc.1.weight.
    let (mut sd, _, _) = bad_file_setup("shape-fc");
    set(
        &mut sd,
        "fc.1.weight",
        StateTensor::F32 {
            shape: vec![16, 10],
            data: vec![0.0; 160],
        },
    );
    let meta = BTreeMap::from([(META_ARCH.to_string(), "1,10;4,8,8,16;2,2,2,2".to_string())]);
    let msg = load_err(&dir, "shape-fc", &serialize(&sd, &meta).unwrap());
    assert!(msg.contains("fc.1.weight"), "{msg}");
}

#[test]
fn wrong_dtype_is_rejected() {
    let (sd, _, dir) = bad_file_setup("dtype");
    // An F64 tensor: our StateTensor cannot hold one, so build the file with the safetensors crate directly.
    let bad_key = "1.running_mean";
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = sd
        .iter()
        .map(|(k, t)| match t {
            StateTensor::F32 { shape, data } if k == bad_key => (
                k.clone(),
                Dtype::F64,
                shape.clone(),
                data.iter()
                    .flat_map(|&v| (v as f64).to_le_bytes())
                    .collect(),
            ),
            StateTensor::F32 { shape, data } => (
                k.clone(),
                Dtype::F32,
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            StateTensor::I64 { shape, data } => (
                k.clone(),
                Dtype::I64,
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views: Vec<(&str, TensorView)> = buffers
        .iter()
        .map(|(k, d, s, b)| (k.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let msg = load_err(&dir, "f64", &bytes);
    assert!(msg.contains(bad_key) && msg.contains("F64"), "{msg}");

    // An F32 counter where PyTorch has an int64, and an I64 weight where it has a float.
    let mut sd2 = sd.clone();
    set(
        &mut sd2,
        "resnet_block1.1.bn2.num_batches_tracked",
        StateTensor::F32 {
            shape: vec![],
            data: vec![0.0],
        },
    );
    let msg = load_err(&dir, "f32-counter", &serialize(&sd2, &no_meta()).unwrap());
    assert!(
        msg.contains("resnet_block1.1.bn2.num_batches_tracked"),
        "{msg}"
    );
    let mut sd3 = sd;
    set(
        &mut sd3,
        "resnet_block4.1.bn1.weight",
        StateTensor::I64 {
            shape: vec![16],
            data: vec![1; 16],
        },
    );
    let msg = load_err(&dir, "i64-weight", &serialize(&sd3, &no_meta()).unwrap());
    assert!(msg.contains("resnet_block4.1.bn1.weight"), "{msg}");
}

// ------------------------------------------------------------------------------------------- full chapter net

/// The chapter's full network as written by PyTorch (`tools/check_pytorch_interop.py --write PATH`, 45 MB,
/// not committed): set `RESNET_PYTORCH_FILE=PATH`; `PATH.logits.safetensors` holds the input and PyTorch's
/// eval-mode logits. Without the variable this test only says it was skipped.
#[test]
fn pytorch_chapter_file_from_env() {
    let Some(path) = std::env::var_os("RESNET_PYTORCH_FILE") else {
        println!(
            "skipped: set RESNET_PYTORCH_FILE to a file from `python3 tools/check_pytorch_interop.py --write PATH`"
        );
        return;
    };
    let path = PathBuf::from(path);
    let mut logits_path = path.clone().into_os_string();
    logits_path.push(".logits.safetensors");
    let (reference, _) = read_sd(Path::new(&logits_path));
    let get = |key: &str| match reference.iter().find(|(k, _)| k == key) {
        Some((_, StateTensor::F32 { shape, data })) => (shape.clone(), data.clone()),
        _ => panic!("{}: no f32 `{key}`", Path::new(&logits_path).display()),
    };
    let (in_shape, input) = get("input");
    let (logits_shape, want) = get("logits");

    let mut net = ModelFile::load(&path).unwrap().network().unwrap();
    let (_, meta) = read_sd(&path);
    assert!(
        !meta.contains_key(META_ARCH),
        "a PyTorch file carries no arch metadata"
    );
    println!(
        "{}: {:?}, {} parameters",
        path.display(),
        net.config,
        net.num_params()
    );
    assert_eq!(in_shape.len(), 4);
    let xs = Shape4::new(in_shape[0], in_shape[1], in_shape[2], in_shape[3]);
    assert_eq!(logits_shape, vec![xs.n, net.config.num_classes]);
    net.set_train(false);
    let got = net.forward(&input, xs, Buffers::Own).unwrap().to_vec();
    let (rel, abs) = scaled_max_diff(&got, &want, 1e-3);
    println!("logits ours:    {got:?}");
    println!("logits PyTorch: {want:?}");
    println!("max |Δ| {abs:.3e} = {rel:.3e} of the logits' scale (tolerance 1e-4)");
    assert!(
        rel <= 1e-4,
        "logits differ: max |Δ| {abs:e} ({rel:e} of scale)"
    );

    // And back: saving what we loaded reproduces PyTorch's tensors exactly.
    let dir = TempDir::new("chapter");
    let out = dir.join("model.safetensors");
    save_model(&out, &net, &BTreeMap::new()).unwrap();
    assert_eq!(read_sd(&out).0, read_sd(&path).0);
}
