//! `.pth` state dicts (src/pth/) against the fixtures tools/make_pth_fixtures.py wrote with torch 2.15 /
//! torchvision 0.29.2: every tensor equal to the safetensors copy of the same state dict, views gathered,
//! and every file that is not a state dict refused with one clear line, never a panic.

mod common;

use common::golden_path;
use resnet::checkpoint::deserialize;
use resnet::nn::{StateDict, StateTensor};
use resnet::pth::{is_pth, read_state_dict};

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(golden_path(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (run tools/make_pth_fixtures.py)"))
}

/// The safetensors copy, in the state_dict() order its `order` metadata records.
fn reference(name: &str) -> StateDict {
    let (sd, meta) = deserialize(&bytes(name), name).unwrap();
    let order = meta.get("order").expect("`order` metadata");
    let ordered: StateDict = order
        .split(',')
        .map(|k| sd.iter().find(|(key, _)| key == k).expect(k).clone())
        .collect();
    assert_eq!(ordered.len(), sd.len());
    ordered
}

/// Exact equality, bit for bit (NaN-safe), with the first difference named.
fn assert_same(got: &StateDict, want: &StateDict) {
    let keys = |sd: &StateDict| sd.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "keys or their order differ");
    for ((k, g), (_, w)) in got.iter().zip(want) {
        assert_eq!(g.dtype_name(), w.dtype_name(), "{k}: dtype");
        assert_eq!(g.shape(), w.shape(), "{k}: shape");
        match (g, w) {
            (StateTensor::F32 { data: a, .. }, StateTensor::F32 { data: b, .. }) => {
                let a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
                assert_eq!(a, b, "{k}: values");
            }
            (StateTensor::I64 { data: a, .. }, StateTensor::I64 { data: b, .. }) => {
                assert_eq!(a, b, "{k}: values")
            }
            _ => unreachable!("dtypes compared above"),
        }
    }
}

fn error_of(name: &str, data: &[u8]) -> String {
    let e = read_state_dict(data, name)
        .expect_err("must be refused")
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.starts_with(&format!("{name}: ")), "names the file: {e}");
    eprintln!("{e}");
    e
}

#[test]
fn torchvision_bottleneck_matches_safetensors_copy() {
    let data = bytes("tv_bottleneck_small.pth");
    assert!(is_pth(&data));
    let sd = read_state_dict(&data, "tv_bottleneck_small.pth").unwrap();
    let want = reference("tv_bottleneck_small.safetensors");
    assert_same(&sd, &want);
    // torchvision's layout: the stem, four layers of Bottleneck blocks with a downsample, fc; 0-d counters.
    assert_eq!(sd[0].0, "conv1.weight");
    assert_eq!(sd.last().unwrap().0, "fc.bias");
    assert!(sd
        .iter()
        .any(|(k, _)| k == "layer4.0.downsample.1.running_var"));
    let (_, nbt) = sd
        .iter()
        .find(|(k, _)| k == "bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(
        nbt,
        &StateTensor::I64 {
            shape: vec![],
            data: vec![1]
        }
    );
}

#[test]
fn views_shared_storages_and_dtypes_are_gathered() {
    let sd = read_state_dict(&bytes("pth_views.pth"), "pth_views.pth").unwrap();
    assert_same(&sd, &reference("pth_views.safetensors"));
    let shape = |k: &str| {
        sd.iter()
            .find(|(key, _)| key == k)
            .unwrap()
            .1
            .shape()
            .to_vec()
    };
    assert_eq!(shape("transposed"), vec![5, 3]);
    assert_eq!(shape("shared_b"), vec![4, 3]);
    assert_eq!(shape("empty"), vec![0, 3]);
    assert_eq!(shape("scalar"), Vec::<usize>::new());
    // Protocol 4 (STACK_GLOBAL, MEMOIZE, FRAME), as `torch.save(..., pickle_protocol=4)` writes it.
    let p4 = read_state_dict(&bytes("pth_views_protocol4.pth"), "p4.pth").unwrap();
    assert_eq!(p4, sd);
}

#[test]
fn a_list_is_not_a_state_dict() {
    let e = error_of("pth_list.pth", &bytes("pth_list.pth"));
    assert!(
        e.contains("not a state dict: the pickle's top-level object is a list"),
        "{e}"
    );
}

#[test]
fn a_whole_pickled_model_says_to_save_its_state_dict() {
    let e = error_of("pth_module.pth", &bytes("pth_module.pth"));
    assert!(e.contains("whole pickled model"), "{e}");
    assert!(e.contains("torch.nn.modules.container.Sequential"), "{e}");
    assert!(e.contains("model.state_dict()"), "{e}");
}

#[test]
fn the_legacy_format_says_to_resave() {
    let data = bytes("pth_legacy.pth");
    assert!(!is_pth(&data));
    let e = error_of("pth_legacy.pth", &data);
    assert!(e.contains("legacy"), "{e}");
    assert!(e.contains("re-save it with a current torch"), "{e}");
}

#[test]
fn not_a_zip_and_empty_input() {
    for data in [&b""[..], b"PK", b"hello world", b"PK\x03\x04garbage"] {
        let e = error_of("x.pth", data);
        assert!(e.contains("x.pth: not"), "{e}");
    }
}

#[test]
fn truncations_and_corrupted_bytes_are_errors_never_panics() {
    let data = bytes("tv_bottleneck_small.pth");
    // Every prefix shorter than the end-of-central-directory record's position is an error; a few hundred cuts.
    let step = (data.len() / 300).max(1);
    for cut in (0..data.len()).step_by(step).chain([data.len() - 1]) {
        error_of("cut.pth", &data[..cut]);
    }
    // A flipped byte: inside the pickle or a storage it must be an error (CRC-32 of every entry read);
    // anywhere else it must at least not panic.
    let sd = read_state_dict(&data, "ok.pth").unwrap();
    let mut refused = 0;
    for i in (0..data.len()).step_by(97) {
        let mut bad = data.clone();
        bad[i] ^= 0x5a;
        match read_state_dict(&bad, "bad.pth") {
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "{e}");
                eprintln!("{e}");
                refused += 1;
            }
            Ok(got) => assert_eq!(got, sd, "byte {i} changed the result without an error"),
        }
    }
    assert!(refused > 0);
    // conv1.weight's first values in its storage: a flipped value byte is caught by the CRC.
    let StateTensor::F32 { data: w, .. } = &sd[0].1 else {
        panic!("conv1.weight is f32")
    };
    let head: Vec<u8> = w[..4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let at = find(&data, &head).expect("conv1.weight's bytes") + 5;
    let mut bad = data.clone();
    bad[at] ^= 1;
    let e = error_of("bad.pth", &bad);
    assert!(e.contains("CRC") || e.contains("storage"), "{e}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The read time of a full-size file (docs/weights.md): `PTH_FILE=/tmp/r50.pth cargo test --release --test pth
/// -- --ignored --nocapture` after `python3 -c "import torch,torchvision;
/// torch.save(torchvision.models.resnet50().state_dict(), '/tmp/r50.pth')"`.
#[test]
#[ignore]
fn read_time_of_a_full_size_file() {
    let path = std::env::var("PTH_FILE").expect("PTH_FILE");
    let data = std::fs::read(&path).unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let sd = read_state_dict(&data, &path).unwrap();
        let values: usize = sd
            .iter()
            .map(|(_, t)| t.shape().iter().product::<usize>())
            .sum();
        eprintln!(
            "{path}: {} tensors, {values} values in {:.1} ms",
            sd.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// A `.pth` archive holding `pickle` as `archive/data.pkl` and `storage` as `archive/data/0`.
fn archive(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pickle).unwrap();
    w.start_file("archive/data/0", opts).unwrap();
    w.write_all(storage).unwrap();
    w.finish().unwrap().into_inner()
}

fn unicode(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
    out
}

fn int(v: i32) -> Vec<u8> {
    let mut out = vec![b'J'];
    out.extend(v.to_le_bytes());
    out
}

/// The protocol-2 pickle torch.save writes for `{key: tensor}` (one FloatStorage of `numel` elements), with
/// any offset, size and stride.
fn tensor_pickle(key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(unicode(key));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(");
    p.extend(unicode("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(int(numel));
    p.extend(b"tQ");
    p.extend(int(offset));
    for dims in [size, stride] {
        p.push(b'(');
        for &d in dims {
            p.extend(int(d));
        }
        p.push(b't');
    }
    p.extend(b"\x89ccollections\nOrderedDict\n)Rt");
    p.extend(b"Ru.");
    p
}

#[test]
fn a_hand_written_pickle_reads_and_its_sizes_are_checked() {
    let storage: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let ok = archive(&tensor_pickle("w", 12, 2, &[2, 3], &[1, 3]), &storage);
    let sd = read_state_dict(&ok, "ok.pth").unwrap();
    assert_eq!(
        sd,
        vec![(
            "w".to_string(),
            StateTensor::F32 {
                shape: vec![2, 3],
                data: vec![2.0, 5.0, 8.0, 3.0, 6.0, 9.0]
            }
        )]
    );
    for (size, stride, offset, what) in [
        (vec![4, 3], vec![3, 1], 1, "reach past its storage"),
        (vec![2, 3], vec![1, 6], 0, "reach past its storage"),
        (
            vec![1 << 30, 1 << 30, 4],
            vec![0, 0, 1],
            0,
            "more than the file's",
        ),
        (
            vec![i32::MAX, i32::MAX, i32::MAX],
            vec![1, 1, 1],
            0,
            "overflows",
        ),
        (vec![2], vec![1], -1, "bad storage offset"),
        (vec![-2], vec![1], 0, "bad size"),
        (vec![2, 2], vec![1], 0, "differ in length"),
    ] {
        let bad = archive(&tensor_pickle("w", 12, offset, &size, &stride), &storage);
        let e = error_of("bad.pth", &bad);
        assert!(e.contains(what), "{size:?} {stride:?}: {e}");
        assert!(e.contains("`w`") || what == "more than the file's", "{e}");
    }
    // A length-1 dimension may have any stride (PyTorch gives such dims arbitrary strides).
    let odd = archive(&tensor_pickle("w", 12, 0, &[1, 3], &[1 << 30, 1]), &storage);
    assert_eq!(
        read_state_dict(&odd, "odd.pth").unwrap()[0].1.shape(),
        &[1, 3]
    );
    // The storage's persistent id may declare any size: the archive's bytes are what count.
    let lying = archive(&tensor_pickle("w", 1 << 30, 0, &[3, 4], &[4, 1]), &storage);
    assert!(read_state_dict(&lying, "lying.pth").is_ok());
}

#[test]
fn values_that_are_not_tensors_are_named() {
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(unicode("epoch"));
    p.extend(int(3));
    p.extend(b"u.");
    let e = error_of("ckpt.pth", &archive(&p, &[]));
    assert!(e.contains("key `epoch` holds an int, not a tensor"), "{e}");
}

#[test]
fn pickles_that_would_explode_or_nest_too_deep_are_refused_first() {
    // Each DUP + TUPLE2 doubles the object: 2^60 nodes from 123 bytes.
    let mut p = vec![0x80, 2, b']'];
    for _ in 0..60 {
        p.extend([b'2', 0x86]);
    }
    p.push(b'.');
    let e = error_of("bomb.pth", &archive(&p, &[]));
    assert!(e.contains("would build more than"), "{e}");
    // 200,000 nested tuples would overflow the stack when dropped.
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85, 200_000));
    p.push(b'.');
    let e = error_of("deep.pth", &archive(&p, &[]));
    assert!(e.contains("nested more than"), "{e}");
    // OBJ with nothing after its mark (repugnant-pickle would index past its stack).
    let e = error_of("obj.pth", &archive(&[0x80, 2, b'(', b'o', b'.'], &[]));
    assert!(e.contains("malformed opcode sequence"), "{e}");
    // No STOP: truncated.
    let e = error_of("nostop.pth", &archive(&[0x80, 2, b'}'], &[]));
    assert!(e.contains("truncated pickle"), "{e}");
    // An unknown opcode.
    let e = error_of("opcode.pth", &archive(&[0x80, 2, 0xff, b'.'], &[]));
    assert!(e.contains("not a valid pickle"), "{e}");
}

/// A pickle of millions of one-byte opcodes inside the size limit (a 60 MiB one took 5.3 GiB before) is refused
/// after at most `MAX_PICKLE_OPS` opcodes, quickly and in bounded memory; one line naming the file.
#[test]
fn an_opcode_flood_is_refused_in_bounded_memory() {
    let mut pickle = vec![0x80, 2]; // PROTO 2
    pickle.extend(std::iter::repeat_n(b'N', resnet::pth::MAX_PICKLE_OPS + 10)); // NONE
    pickle.push(b'.'); // STOP
    let started = std::time::Instant::now();
    let e = error_of("flood.pth", &archive(&pickle, &[]));
    assert!(e.contains("flood.pth") && e.contains("opcodes"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
}
