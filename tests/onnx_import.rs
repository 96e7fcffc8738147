//! ONNX in (issue #29): our own exports read back through `ModelFile` (what `predict`, `eval`, `serve`,
//! `train --init` and `export` load with) give the same network, bit for bit when batch norm
//! is kept and to float rounding when it is folded, with the class names and preprocessing the export stored;
//! graphs that are not a ResNet, or lie, are refused with one line.

mod common;
use prost::Message;
use resnet::checkpoint::{self, META_CLASSES, META_INPUT_SIZE};
use resnet::model_file::ModelFile;
use resnet::nn::{ArchName, Buffers, ResNet, ResNetConfig, StateTensor, Stem};
use resnet::onnx::proto::{ModelProto, NodeProto, TensorProto};
use resnet::onnx::{export, export_bytes, ExportOptions};
use resnet::Shape4;
use std::collections::BTreeMap;
use std::path::Path;

/// A network of `config` whose batch norms hold statistics far from the identity, as a model file with `meta`.
fn model_file(config: ResNetConfig, meta: &[(&str, &str)]) -> (ResNet, ModelFile) {
    let mut net = ResNet::new(config, 5).unwrap();
    let mut sd = net.state_dict();
    for (i, (key, t)) in sd.iter_mut().enumerate() {
        let StateTensor::F32 { data, .. } = t else {
            continue;
        };
        let wave = |j: usize| ((i * 31 + j * 17) % 97) as f32 / 97.0;
        for (j, v) in data.iter_mut().enumerate() {
            if key.ends_with("running_var") {
                *v = 0.5 + wave(j);
            } else if key.ends_with("running_mean") || (key.contains("bn") && key.ends_with("bias"))
            {
                *v = wave(j) - 0.5;
            } else if key.contains("bn") && key.ends_with("weight") {
                *v = 0.75 + wave(j) / 2.0;
            }
        }
    }
    net.load_state_dict(&sd).unwrap();
    let file = common::model_file_of(&net, meta);
    (net, file)
}

/// The eval-mode logits of `net` for a batch of two `c`×`side`×`side` inputs.
fn logits(net: &mut ResNet, side: usize) -> Vec<f32> {
    net.set_train(false);
    let c = net.config.in_channels;
    let xs = Shape4::new(2, c, side, side);
    let x: Vec<f32> = (0..xs.len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    net.forward(&x, xs, Buffers::Own).unwrap().to_vec()
}

fn import(bytes: &[u8]) -> resnet::Result<ModelFile> {
    ModelFile::from_bytes(bytes, Path::new("m.onnx"))
}

/// Exports `file` unfolded and folded, reads both back and compares with `net`.
fn round_trip(net: &mut ResNet, file: &ModelFile, side: usize) {
    let want = logits(net, side);
    for opset in [17, 21] {
        let opts = ExportOptions {
            opset,
            ..Default::default()
        };
        let back = import(&export_bytes(file, &opts).unwrap()).unwrap();
        assert_eq!(back.config, net.config);
        assert_eq!(back.class_names(), file.class_names());
        assert_eq!(back.preprocess(None).ok(), file.preprocess(None).ok());
        assert_eq!(back.trained_size, file.trained_size);
        let mut imported = back.network().unwrap();
        assert_eq!(imported.state_dict(), net.state_dict());
        assert_eq!(
            logits(&mut imported, side),
            want,
            "opset {opset}: bit-identical"
        );
        // `train --init` starts from it as from the model file.
        let mut fresh = ResNet::new(net.config.clone(), 9).unwrap();
        back.load_into(&mut fresh, false).unwrap();
        assert_eq!(fresh.state_dict(), net.state_dict());
        // What `export` reads, it writes again: the same nodes, weights and metadata.
        let (again, first) = (export(&back, &opts).unwrap(), export(file, &opts).unwrap());
        assert_eq!(again.metadata_props, first.metadata_props);
        let (again, first) = (again.graph.unwrap(), first.graph.unwrap());
        assert!(again.node == first.node && again.initializer == first.initializer);
    }
    let opts = ExportOptions {
        fold_bn: true,
        ..Default::default()
    };
    let back = import(&export_bytes(file, &opts).unwrap()).unwrap();
    assert_eq!(back.config, net.config);
    let got = logits(&mut back.network().unwrap(), side);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "folded: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn the_chapter_net_reads_back_bit_identical() {
    let config = ResNetConfig {
        widths: vec![8, 16, 16, 32],
        ..ResNetConfig::chapter(1, 10)
    };
    let (mut net, file) = model_file(config, &[(META_INPUT_SIZE, "32")]);
    round_trip(&mut net, &file, 32);
}

#[test]
fn torchvision_resnet18_reads_back_bit_identical() {
    let (mut net, file) = model_file(ResNetConfig::named(ArchName::Resnet18, 3, 1000), &[]);
    round_trip(&mut net, &file, 32);
}

#[test]
fn a_narrow_bottleneck_and_a_small_stem_read_back() {
    let config = ResNetConfig {
        widths: vec![8, 16, 16, 32],
        layers: vec![1, 2, 1, 1],
        ..ResNetConfig::named(ArchName::Resnet50, 3, 1000)
    };
    let (mut net, file) = model_file(config.clone(), &[]);
    round_trip(&mut net, &file, 32);
    let small = ResNetConfig {
        stem: Stem::Small,
        in_channels: 1,
        num_classes: 3,
        ..config
    };
    let (mut net, file) = model_file(
        small,
        &[(META_INPUT_SIZE, "28"), (META_CLASSES, r#"["a","b","c"]"#)],
    );
    round_trip(&mut net, &file, 28);
}

/// Without our metadata (as `torch.onnx.export` writes them), the names the exporter kept decide the naming,
/// and a 3-channel graph gets the ImageNet preprocessing.
#[test]
fn graphs_without_metadata_take_their_naming_from_the_structure_and_names() {
    let (mut net, file) = model_file(ResNetConfig::named(ArchName::Resnet18, 3, 1000), &[]);
    let want = logits(&mut net, 32);
    let mut model = export(&file, &ExportOptions::default()).unwrap();
    model.metadata_props.clear();
    let back = import(&model.encode_to_vec()).unwrap();
    assert_eq!(back.config, net.config);
    assert_eq!(logits(&mut back.network().unwrap(), 32), want);
    assert_eq!(back.class_names().len(), 1000);
    assert_eq!(
        back.preprocess(None).unwrap().prepared_size(500, 400),
        (224, 224)
    );
}

/// A model whose graph `edit` changed, encoded.
fn edited(edit: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    let config = ResNetConfig {
        widths: vec![4, 8, 8, 8],
        layers: vec![1, 1, 1, 1],
        ..ResNetConfig::named(ArchName::Resnet18, 3, 5)
    };
    let (_, file) = model_file(config, &[]);
    let mut model = export(&file, &ExportOptions::default()).unwrap();
    edit(&mut model);
    model.encode_to_vec()
}

fn f32s_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn error(bytes: &[u8]) -> String {
    let e = import(bytes).err().expect("refused").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

fn node<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    let g = m.graph.as_mut().unwrap();
    g.node
        .iter_mut()
        .find(|n| n.name.as_deref() == Some(name))
        .unwrap()
}

fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut TensorProto {
    let g = m.graph.as_mut().unwrap();
    g.initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn graphs_that_are_not_a_resnet_name_the_first_node_that_does_not_fit() {
    let e = error(&edited(|m| {
        node(m, "layer2.0.bn1").op_type = Some("Sigmoid".into())
    }));
    assert!(
        e.starts_with("m.onnx: cannot place node `layer2.0.bn1` (Sigmoid) in a ResNet: expected"),
        "{e}"
    );
    let e = error(&edited(|m| {
        node(m, "layer3.0.relu").op_type = Some("Tanh".into())
    }));
    assert!(e.contains("node `layer3.0.relu` (Tanh)"), "{e}");
    let e = error(&edited(|m| {
        let n = node(m, "layer1.0.conv1");
        n.attribute.retain(|a| a.name.as_deref() != Some("group"));
        n.attribute.push(resnet::onnx::proto::AttributeProto {
            name: Some("group".into()),
            i: Some(2),
            ..Default::default()
        });
    }));
    assert!(e.contains("node `layer1.0.conv1` (Conv)"), "{e}");
}

#[test]
fn cycles_undefined_values_and_lying_shapes_are_one_line() {
    // layer1.0.conv1 reads the output of a node after it: a cycle.
    let e = error(&edited(|m| {
        node(m, "layer1.0.conv1").input[0] = "layer1.0.relu".into()
    }));
    assert!(
        e.contains("before it is made: the graph has a cycle or is not in topological order"),
        "{e}"
    );
    let e = error(&edited(|m| {
        node(m, "layer1.0.conv1").input[0] = "nowhere".into()
    }));
    assert!(e.ends_with("uses `nowhere`, which nothing makes"), "{e}");
    let e = error(&edited(|m| init(m, "layer1.0.conv1.weight").dims[0] = 5));
    assert!(e.contains("layer1.0.conv1.weight"), "{e}");
    // A billion values declared in 20 bytes: refused before anything is allocated.
    let e = error(&edited(|m| {
        let t = init(m, "fc.weight");
        t.dims = vec![1_000, 1_000_000];
        t.raw_data = Some(vec![0; 20]);
    }));
    assert!(
        e.contains("initializer `fc.weight` declares dimensions [1000, 1000000], more than"),
        "{e}"
    );
    let e = error(&edited(|m| {
        let t = init(m, "fc.weight");
        t.dims = vec![1_000, 100];
        t.raw_data = Some(vec![0; 20]);
    }));
    assert!(
        e.contains("holds 20 of the 400000 values (or bytes) they need"),
        "{e}"
    );
}

#[test]
fn external_data_and_broken_files_are_refused() {
    let e = error(&edited(|m| {
        let t = init(m, "fc.weight");
        t.raw_data = None;
        t.data_location = Some(1);
        t.external_data = vec![resnet::onnx::proto::StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../weights.bin".into()),
        }];
    }));
    assert!(
        e.contains("keeps its data in `../weights.bin`, outside the model's folder"),
        "{e}"
    );
    // Beside the model, it is read: at its offset, checked against the file's length first.
    let dir = std::env::temp_dir().join(format!("onnx-external-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut weights = Vec::new();
    let bytes = edited(|m| {
        let t = init(m, "fc.weight");
        weights = t.raw_data.take().unwrap();
        t.data_location = Some(1);
        let entry = |k: &str, v: String| resnet::onnx::proto::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", "w.bin".into()),
            entry("offset", "3".into()),
        ];
    });
    let load = || ModelFile::from_bytes(&bytes, &dir.join("m.onnx"));
    std::fs::write(dir.join("w.bin"), [&[0u8; 3], &weights[..]].concat()).unwrap();
    let file = load().unwrap();
    let fc = file.weights.iter().find(|(k, _)| k == "fc.weight").unwrap();
    let StateTensor::F32 { data, .. } = &fc.1 else {
        panic!("f32")
    };
    assert_eq!(data[..], *f32s_of(&weights));
    std::fs::write(dir.join("w.bin"), &weights).unwrap();
    let e = load().err().unwrap().to_string();
    assert!(
        e.contains("w.bin` holds 160 bytes, too few for 160 bytes at offset 3"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let whole = edited(|_| {});
    assert!(import(&whole).is_ok());
    let e = error(&whole[..whole.len() / 2]);
    assert!(e.starts_with("m.onnx: not a valid ONNX model ("), "{e}");
    // Sniffed by content too; a safetensors file is never taken for ONNX.
    assert!(ModelFile::from_bytes(&whole, Path::new("model.bin")).is_ok());
    assert!(!resnet::onnx::import::is_onnx(
        &checkpoint::serialize(&vec![], &BTreeMap::new()).unwrap()
    ));
}
