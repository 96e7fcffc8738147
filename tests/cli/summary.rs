//! `resnet summary`: the chapter's shape walk, exactly, and the torchvision family (resnet18 to resnet152:
//! shapes, parameter counts, `--plan`, the small stem, `--classes`); bad `--input` values fail cleanly.

use crate::{expect_failure, expect_success, resnet, scratch};

/// The chapter's summary, exactly (the d2l book's shape walk for `torch.rand(1, 1, 224, 244)`).
const CHAPTER_SUMMARY: &str = "\
0  output shape:\t torch.Size([1, 64, 112, 122])
1  output shape:\t torch.Size([1, 64, 112, 122])
2  output shape:\t torch.Size([1, 64, 112, 122])
3  output shape:\t torch.Size([1, 64, 56, 61])
resnet_block1  output shape:\t torch.Size([1, 64, 56, 61])
resnet_block2  output shape:\t torch.Size([1, 128, 28, 31])
resnet_block3  output shape:\t torch.Size([1, 256, 14, 16])
resnet_block4  output shape:\t torch.Size([1, 512, 7, 8])
global_avg_pool  output shape:\t torch.Size([1, 512, 1, 1])
fc  output shape:\t torch.Size([1, 10])
parameters: 11,178,378
";

/// torchvision's resnet50 at 1×3×224×224: its top-level children and its parameter count.
const RESNET50_SUMMARY: &str = "\
conv1  output shape:\t torch.Size([1, 64, 112, 112])
bn1  output shape:\t torch.Size([1, 64, 112, 112])
relu  output shape:\t torch.Size([1, 64, 112, 112])
maxpool  output shape:\t torch.Size([1, 64, 56, 56])
layer1  output shape:\t torch.Size([1, 256, 56, 56])
layer2  output shape:\t torch.Size([1, 512, 28, 28])
layer3  output shape:\t torch.Size([1, 1024, 14, 14])
layer4  output shape:\t torch.Size([1, 2048, 7, 7])
avgpool  output shape:\t torch.Size([1, 2048, 1, 1])
fc  output shape:\t torch.Size([1, 1000])
parameters: 25,557,032
";

#[test]
fn summary_prints_the_torchvision_family() {
    let cwd = scratch("summary-family");
    let out = expect_success(
        &resnet(
            &["summary", "--arch", "resnet50", "--input", "1x3x224x224"],
            &cwd,
        ),
        "summary resnet50",
    );
    assert_eq!(out, RESNET50_SUMMARY);
    // --plan adds one line per convolution, named as in the state dict, with its geometry and its three
    // algorithms (which ones depends on the CPU).
    let out = expect_success(
        &resnet(
            &[
                "summary",
                "--arch",
                "resnet50",
                "--input",
                "1x3x224x224",
                "--plan",
            ],
            &cwd,
        ),
        "summary --plan",
    );
    assert!(
        out.starts_with(RESNET50_SUMMARY.split("parameters").next().unwrap()),
        "{out}"
    );
    assert!(out.contains("convolution plans at batch 1"), "{out}");
    let plans: Vec<&str> = out.lines().filter(|l| l.contains(" fwd: ")).collect();
    assert_eq!(plans.len(), 53, "{out}");
    for (name, geometry) in [
        ("conv1 ", "7x7 /2    3->64   224x224"),
        ("layer1.0.downsample.0 ", "1x1 /1   64->256   56x56"),
        ("layer2.0.conv2 ", "3x3 /2  128->128   56x56"),
        ("layer4.2.conv3 ", "1x1 /1  512->2048   7x7"),
    ] {
        let line = plans.iter().find(|l| l.trim_start().starts_with(name));
        assert!(
            line.is_some_and(|l| l.contains(geometry)
                && l.contains(" dW: ")
                && l.contains(" dX: ")),
            "{name}: {line:?}"
        );
    }
    // Then the compiled inference network: one line per convolution with its epilogue (each block's last
    // convolution adds the shortcut), the max pool, and the arena.
    let compiled: Vec<&str> = out.lines().filter(|l| l.contains("-> buffer")).collect();
    assert_eq!(compiled.len(), 54, "{out}");
    let shortcut_adds = compiled
        .iter()
        .filter(|l| l.contains("bias + shortcut, relu"))
        .count();
    assert_eq!(shortcut_adds, 16, "one per Bottleneck: {out}");
    // The first stage's expansions (64 channels in, one slice of the 1×1 tiles' reduction) write over the
    // shortcut they add.
    for b in 0..3 {
        let name = format!("layer1.{b}.conv3 ");
        let line = compiled.iter().find(|l| l.trim_start().starts_with(&name));
        assert!(
            line.is_some_and(|l| l.ends_with(", over the shortcut")),
            "{name}: {line:?}"
        );
    }
    assert!(out.contains("  arena: "), "{out}");
    // torchvision's published parameter counts, at 3 channels and 1000 classes (the defaults).
    for (arch, count) in [
        ("resnet18", "11,689,512"),
        ("resnet34", "21,797,672"),
        ("resnet101", "44,549,160"),
        ("resnet152", "60,192,808"),
    ] {
        let out = expect_success(&resnet(&["summary", "--arch", arch], &cwd), arch);
        assert!(
            out.ends_with(&format!("parameters: {count}\n")),
            "{arch}:\n{out}"
        );
    }
    // The small stem keeps 32×32 at full size into layer1; another class count changes only fc.
    let out = expect_success(
        &resnet(
            &[
                "summary",
                "--arch",
                "resnet18",
                "--stem",
                "small",
                "--input",
                "2x3x32x32",
                "--classes",
                "10",
            ],
            &cwd,
        ),
        "small stem",
    );
    assert!(
        out.contains("layer1  output shape:\t torch.Size([2, 64, 32, 32])"),
        "{out}"
    );
    assert!(!out.contains("maxpool"), "{out}");
    assert!(
        out.contains("fc  output shape:\t torch.Size([2, 10])"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn summary_prints_the_chapters_shapes() {
    let cwd = scratch("summary");
    let out = expect_success(
        &resnet(&["summary", "--input", "1x1x224x244"], &cwd),
        "summary",
    );
    assert_eq!(out, CHAPTER_SUMMARY);
    // The default input is the chapter's.
    assert_eq!(
        expect_success(&resnet(&["summary"], &cwd), "summary"),
        CHAPTER_SUMMARY
    );

    // The chapter's network accepts any positive size: PyTorch's eval-mode walk of a 1×1×3×3 (or 1×1×1×1) input
    // also ends in [1, 10] (a 7×7/2 conv with padding 3 maps sizes 1..3 to 1..2, later stages keep 1×1).
    for tiny in ["1x1x3x3", "1x1x1x1"] {
        let out = expect_success(&resnet(&["summary", "--input", tiny], &cwd), tiny);
        assert!(
            out.contains("fc  output shape:\t torch.Size([1, 10])"),
            "{out}"
        );
    }

    for (bad, want) in [
        ("1x1x224", "four dimensions"),
        ("1x1x224x244x1", "four dimensions"),
        ("", "four dimensions"),
        ("axbxcxd", "not a positive integer"),
        ("-1x1x2x2", "not a positive integer"),
        ("1x1x2.5x2", "not a positive integer"),
        ("1x1x99999999999999999999x1", "not a positive integer"),
        ("0x1x2x2", "positive"),
        ("1x1x0x2", "positive"),
        ("100000x100000x100000x100000", "2^22"),
        ("4294967296x4294967296x4294967296x4294967296", "2^22"),
        ("1x1x20000x20000", "2^22"),
    ] {
        let err = expect_failure(&resnet(&["summary", "--input", bad], &cwd), bad);
        assert!(
            err.contains("--input") && err.contains(want),
            "--input {bad:?}: want `{want}` in:\n{err}"
        );
    }
    assert!(std::fs::read_dir(&cwd).unwrap().next().is_none());
    let _ = std::fs::remove_dir_all(&cwd);
}
