//! `resnet export --onnx` (issue #29): the exported graphs parsed back with the same protobuf messages and checked
//! without Python: opset and IR version, the input and output names and shapes (dynamic or fixed batch, fixed or
//! dynamic height and width), the operators used, topological order, initializer shapes, sizes and values, and
//! the metadata. `tools/check_onnx.py` runs the exports in ONNX Runtime and OpenVINO by hand.

mod common;
use prost::Message;
use resnet::checkpoint::{self, META_ARCH, META_CLASSES, META_INPUT_SIZE};
use resnet::model_file::ModelFile;
use resnet::nn::{ArchName, BlockKind, ResNet, ResNetConfig, StateTensor, Stem};
use resnet::onnx::proto::tensor_proto::DataType;
use resnet::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use resnet::onnx::proto::{type_proto, ModelProto, ValueInfoProto};
use resnet::onnx::{export, export_bytes, ExportOptions, INPUT, META_PREPROCESSING, OPS, OUTPUT};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A fresh network of `config` as a model file, with `meta` (plus the architecture) in its metadata.
fn model_file(config: ResNetConfig, meta: &[(&str, &str)]) -> (ResNet, ModelFile) {
    let net = ResNet::new(config, 3).unwrap();
    let file = common::model_file_of(&net, meta);
    (net, file)
}

/// The dimensions of a graph input or output.
fn dims(v: &ValueInfoProto) -> Vec<Dim> {
    let Some(type_proto::Value::TensorType(t)) = &v.r#type.as_ref().unwrap().value else {
        panic!("{:?} is not a tensor", v.name)
    };
    assert_eq!(t.elem_type, Some(DataType::Float as i32));
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| d.value.clone().unwrap())
        .collect()
}

fn fixed_or(n: Option<usize>, name: &str) -> Dim {
    n.map_or(Dim::DimParam(name.into()), |n| Dim::DimValue(n as i64))
}

/// Exports, parses the bytes back and checks everything the graph must satisfy.
fn check(
    net: &ResNet,
    file: &ModelFile,
    opts: ExportOptions,
    hw: Option<(usize, usize)>,
) -> ModelProto {
    let bytes = export_bytes(file, &opts).unwrap();
    let model = ModelProto::decode(&bytes[..]).unwrap();
    assert_eq!(model, export(file, &opts).unwrap());
    let config = &net.config;

    // Opset and IR version.
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain.as_deref(), Some(""));
    assert_eq!(model.opset_import[0].version, Some(opts.opset));
    assert_eq!(model.ir_version, Some(resnet::onnx::ir_version(opts.opset)));
    let graph = model.graph.as_ref().unwrap();

    // Input and output.
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.output.len(), 1);
    assert_eq!(graph.input[0].name.as_deref(), Some(INPUT));
    assert_eq!(graph.output[0].name.as_deref(), Some(OUTPUT));
    let batch = fixed_or(opts.batch, "N");
    assert_eq!(
        dims(&graph.input[0]),
        [
            batch.clone(),
            Dim::DimValue(config.in_channels as i64),
            fixed_or(hw.map(|h| h.0), "H"),
            fixed_or(hw.map(|h| h.1), "W"),
        ]
    );
    assert_eq!(
        dims(&graph.output[0]),
        [batch, Dim::DimValue(config.num_classes as i64)]
    );

    // Initializers: unique names, f32 raw data of their dims' size.
    let mut inits = HashMap::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap();
        assert_eq!(t.data_type, Some(DataType::Float as i32), "{name}");
        assert!(t.float_data.is_empty(), "{name}: raw_data only");
        let raw = t.raw_data.as_ref().unwrap();
        let count: i64 = t.dims.iter().product();
        assert_eq!(raw.len() as i64, 4 * count, "{name}");
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        assert!(
            inits.insert(name.clone(), (dims, values)).is_none(),
            "{name} twice"
        );
    }

    // Nodes: allowed operators, topological order, one output each, unique outputs.
    let mut known: HashSet<String> = inits.keys().cloned().collect();
    known.insert(INPUT.into());
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for node in &graph.node {
        let op = node.op_type.clone().unwrap();
        assert!(
            OPS.contains(&op.as_str()),
            "{op} is not a standard operator we allow"
        );
        for input in &node.input {
            assert!(
                known.contains(input),
                "{:?} reads {input} before it is written",
                node.name
            );
        }
        assert_eq!(node.output.len(), 1);
        assert!(
            known.insert(node.output[0].clone()),
            "{} written twice",
            node.output[0]
        );
        *ops.entry(op).or_default() += 1;
    }
    assert_eq!(graph.node.last().unwrap().output, [OUTPUT]);
    assert_eq!(graph.node.last().unwrap().op_type.as_deref(), Some("Gemm"));
    let gemm = graph.node.last().unwrap();
    assert!(gemm
        .attribute
        .iter()
        .any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1)));

    // Operator counts follow the description.
    let blocks: usize = config.layers.iter().sum();
    let main_convs = match config.block {
        BlockKind::Basic => 2,
        BlockKind::Bottleneck => 3,
    };
    let shortcuts = net
        .stages
        .iter()
        .flatten()
        .filter(|b| b.shortcut_conv.is_some())
        .count();
    let shortcut_bns = net
        .stages
        .iter()
        .flatten()
        .filter(|b| b.shortcut_bn.is_some())
        .count();
    let convs = 1 + blocks * main_convs + shortcuts;
    assert_eq!(ops["Conv"], convs);
    assert_eq!(ops["Add"], blocks);
    assert_eq!(ops["Relu"], 1 + blocks * main_convs);
    assert_eq!(
        ops.get("MaxPool").copied().unwrap_or(0),
        usize::from(config.stem == Stem::Imagenet)
    );
    assert_eq!(ops["GlobalAveragePool"], 1);
    assert_eq!(ops["Flatten"], 1);
    assert_eq!(ops["Gemm"], 1);
    let bns = if opts.fold_bn {
        0
    } else {
        1 + blocks * main_convs + shortcut_bns
    };
    assert_eq!(ops.get("BatchNormalization").copied().unwrap_or(0), bns);

    // Initializers are the state dict's tensors, by key, in PyTorch's layouts (OIHW, [out, in]); folded convs
    // keep the shapes, and every conv gets a bias.
    let sd: HashMap<String, StateTensor> = net.state_dict().into_iter().collect();
    for (name, (dims, values)) in &inits {
        match sd.get(name) {
            Some(StateTensor::F32 { shape, data }) => {
                assert_eq!(dims, shape, "{name}");
                let folded = opts.fold_bn && !name.starts_with(config.naming.fc());
                if !folded {
                    assert_eq!(values, data, "{name}");
                }
            }
            Some(StateTensor::I64 { .. }) => panic!("{name}: an i64 tensor as an initializer"),
            None => assert!(
                opts.fold_bn && name.ends_with(".bias"),
                "{name} is not in the state dict"
            ),
        }
    }
    let fc = config.naming.fc();
    assert_eq!(
        inits[&format!("{fc}.weight")].0,
        [config.num_classes, net.fc.in_features]
    );
    if !opts.fold_bn {
        let params: usize = inits
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, (_, v))| v.len())
            .sum();
        assert_eq!(params, net.num_params());
    }

    // Metadata.
    let meta: HashMap<_, _> = model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect();
    let classes: Vec<String> = serde_json::from_str(&meta[META_CLASSES]).unwrap();
    assert_eq!(classes, file.class_names());
    let arch: ResNetConfig = serde_json::from_str(&meta[META_ARCH]).unwrap();
    assert_eq!(&arch, config);
    let pre: serde_json::Value = serde_json::from_str(&meta[META_PREPROCESSING]).unwrap();
    assert_eq!(pre["channels"], config.in_channels);
    assert!(pre["steps"].is_array(), "{pre}");
    model
}

#[test]
fn the_chapter_net_exports_with_and_without_folded_batch_norms() {
    let (net, file) = model_file(ResNetConfig::chapter(1, 10), &[(META_INPUT_SIZE, "96")]);
    let model = check(&net, &file, ExportOptions::default(), Some((96, 96)));
    let meta = &model.metadata_props;
    assert!(meta
        .iter()
        .any(|p| p.key.as_deref() == Some(META_INPUT_SIZE) && p.value.as_deref() == Some("96")));
    let pre = meta
        .iter()
        .find(|p| p.key.as_deref() == Some(META_PREPROCESSING))
        .unwrap();
    assert_eq!(
        pre.value.as_deref(),
        Some(r#"{"channels":1,"normalize":null,"steps":[{"resize":96}]}"#)
    );
    for opset in [17, 21] {
        let opts = ExportOptions {
            opset,
            batch: Some(3),
            fold_bn: true,
        };
        check(&net, &file, opts, Some((96, 96)));
    }
}

#[test]
fn torchvision_resnet18_exports_with_dynamic_height_and_width() {
    let (net, file) = model_file(ResNetConfig::named(ArchName::Resnet18, 3, 1000), &[]);
    check(&net, &file, ExportOptions::default(), None);
    let opts = ExportOptions {
        opset: 19,
        batch: Some(8),
        fold_bn: true,
    };
    let model = check(&net, &file, opts, None);
    let meta = &model.metadata_props;
    let pre = meta
        .iter()
        .find(|p| p.key.as_deref() == Some(META_PREPROCESSING))
        .unwrap();
    let pre: serde_json::Value = serde_json::from_str(pre.value.as_deref().unwrap()).unwrap();
    assert_eq!(
        pre["steps"],
        serde_json::json!([{"resize": 256}, {"center_crop": [224, 224]}])
    );
}

#[test]
fn a_narrow_bottleneck_and_a_small_stem_export() {
    let config = ResNetConfig {
        widths: vec![16, 32, 32, 64],
        layers: vec![1, 1, 1, 1],
        ..ResNetConfig::named(ArchName::Resnet50, 3, 1000)
    };
    let (net, file) = model_file(config.clone(), &[]);
    check(&net, &file, ExportOptions::default(), None);
    check(
        &net,
        &file,
        ExportOptions {
            fold_bn: true,
            ..Default::default()
        },
        None,
    );

    let small = ResNetConfig {
        stem: Stem::Small,
        in_channels: 1,
        num_classes: 3,
        ..config
    };
    let (net, file) = model_file(
        small,
        &[(META_INPUT_SIZE, "28"), (META_CLASSES, r#"["a","b","c"]"#)],
    );
    let model = check(
        &net,
        &file,
        ExportOptions {
            batch: Some(1),
            ..Default::default()
        },
        Some((28, 28)),
    );
    assert!(model
        .metadata_props
        .iter()
        .any(|p| p.value.as_deref() == Some(r#"["a","b","c"]"#)));
    check(
        &net,
        &file,
        ExportOptions {
            fold_bn: true,
            ..Default::default()
        },
        Some((28, 28)),
    );
}

#[test]
fn bad_options_are_one_line() {
    let (_, file) = model_file(
        ResNetConfig {
            widths: vec![4, 8, 8, 16],
            ..ResNetConfig::chapter(1, 10)
        },
        &[],
    );
    let err = |opts: ExportOptions| export(&file, &opts).unwrap_err().to_string();
    assert_eq!(
        err(ExportOptions {
            opset: 16,
            ..Default::default()
        }),
        "--opset must be between 17 and 21, got 16"
    );
    assert_eq!(
        err(ExportOptions {
            batch: Some(0),
            ..Default::default()
        }),
        "--batch must be at least 1"
    );
}

#[test]
fn the_command_writes_the_file_atomically() {
    let dir = std::env::temp_dir().join(format!("resnet-onnx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (net, file) = model_file(
        ResNetConfig {
            widths: vec![4, 8, 8, 16],
            ..ResNetConfig::chapter(1, 10)
        },
        &[(META_INPUT_SIZE, "28")],
    );
    let weights = dir.join("m.safetensors");
    checkpoint::save_model(
        &weights,
        &net,
        &BTreeMap::from([(META_INPUT_SIZE.to_string(), "28".to_string())]),
    )
    .unwrap();
    let out = dir.join("m.onnx");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["export", "--weights"])
        .arg(&weights)
        .arg("--onnx")
        .arg(&out)
        .args(["--fold-bn", "--batch", "2", "--opset", "18"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("input [2, 1, 28, 28], opset 18, batch norms folded"),
        "{stdout}"
    );
    let bytes = std::fs::read(&out).unwrap();
    let opts = ExportOptions {
        opset: 18,
        batch: Some(2),
        fold_bn: true,
    };
    assert_eq!(bytes, export_bytes(&file, &opts).unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["m.onnx", "m.safetensors"],
        "no temporary file is left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
