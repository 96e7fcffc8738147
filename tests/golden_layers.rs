//! Every layer's forward and backward against PyTorch (tests/golden/layers.safetensors, written by
//! tools/make_golden.py).
//!
//! Tolerance: 1e-5 of each tensor's largest magnitude. Both sides compute in f32 with different summation
//! orders (GEMM blocking, reduction trees); for the sums of ≤ a few hundred terms here the rounding
//! difference is ~1e-7–1e-6 relative, so 1e-5 catches any real error (a wrong index, tap or scale is O(1))
//! while never failing on rounding.

mod common;
use common::{assert_close, Golden};
use rand::SeedableRng;
use resnet::kernels::{loss, pointwise, pool};
use resnet::nn::{
    BatchNorm2d, BnStore, Buffers, Conv2d, ConvStore, Grad, InitRng, Linear, Workspace,
};
use resnet::tensor::{nchw_to_nhwc, nhwc_to_nchw};
use resnet::Shape4;

const TOL: f32 = 1e-5;

fn shape4(v: &[usize]) -> Shape4 {
    Shape4::new(v[0], v[1], v[2], v[3])
}

#[test]
fn conv2d_forward_and_backward_match_pytorch() {
    let g = Golden::load("layers.safetensors");
    // (kernel, stride, padding) of conv0..conv4, as in tools/make_golden.py; conv4 (16 → 32 channels, 4 images
    // of 10×10) runs forward and both gradients on the Winograd kernels on AVX2 CPUs.
    let configs = [(3, 1, 1), (7, 2, 3), (1, 2, 0), (3, 2, 1), (3, 1, 1)];
    let mut ws = Workspace::default();
    for (i, &(k, stride, pad)) in configs.iter().enumerate() {
        let p = format!("conv{i}");
        let xs = shape4(&g.shape(&format!("{p}.x")));
        let ys = shape4(&g.shape(&format!("{p}.y")));
        let mut rng = InitRng::seed_from_u64(0);
        let mut conv = Conv2d::new(xs.c, ys.c, k, stride, pad, &mut rng);
        conv.set_weight_oihw(&g.f32(&format!("{p}.weight")));
        conv.bias = g.f32(&format!("{p}.bias"));
        let x = nchw_to_nhwc(&g.f32(&format!("{p}.x")), xs);
        let out = conv.forward(&x, xs, ConvStore::Out, &mut ws);
        assert_eq!(out, ys);
        assert_close(
            &format!("{p}.y"),
            &nhwc_to_nchw(&conv.out, ys),
            &g.f32(&format!("{p}.y")),
            TOL,
        );
        let dy = nchw_to_nhwc(&g.f32(&format!("{p}.dy")), ys);
        conv.backward(&x, &dy, Some(Buffers::Own), &mut ws);
        assert_close(
            &format!("{p}.dx"),
            &nhwc_to_nchw(&conv.grad_input, xs),
            &g.f32(&format!("{p}.dx")),
            TOL,
        );
        assert_close(
            &format!("{p}.dweight"),
            &conv.hwio_to_oihw(&conv.grad_weight),
            &g.f32(&format!("{p}.dweight")),
            TOL,
        );
        assert_close(
            &format!("{p}.dbias"),
            &conv.grad_bias,
            &g.f32(&format!("{p}.dbias")),
            TOL,
        );
    }
}

#[test]
fn batch_norm_train_eval_and_backward_match_pytorch() {
    let g = Golden::load("layers.safetensors");
    let xs = shape4(&g.shape("bn.x"));
    let mut bn = BatchNorm2d::new(xs.c, false);
    bn.weight = g.f32("bn.weight");
    bn.bias = g.f32("bn.bias");
    let x = nchw_to_nhwc(&g.f32("bn.x"), xs);
    bn.forward(&x, xs, true, BnStore::Out);
    assert_close(
        "bn.y_train",
        &nhwc_to_nchw(&bn.out, xs),
        &g.f32("bn.y_train"),
        TOL,
    );
    assert_close(
        "bn.running_mean",
        &bn.running_mean,
        &g.f32("bn.running_mean"),
        TOL,
    );
    assert_close(
        "bn.running_var",
        &bn.running_var,
        &g.f32("bn.running_var"),
        TOL,
    );
    assert_eq!(bn.num_batches_tracked, 1);
    let dy = nchw_to_nhwc(&g.f32("bn.dy"), xs);
    bn.backward(&x, Grad::Own(&dy));
    assert_close(
        "bn.dx",
        &nhwc_to_nchw(&bn.grad_input, xs),
        &g.f32("bn.dx"),
        TOL,
    );
    assert_close("bn.dweight", &bn.grad_weight, &g.f32("bn.dweight"), TOL);
    assert_close("bn.dbias", &bn.grad_bias, &g.f32("bn.dbias"), TOL);
    bn.forward(&x, xs, false, BnStore::Out);
    assert_close(
        "bn.y_eval",
        &nhwc_to_nchw(&bn.out, xs),
        &g.f32("bn.y_eval"),
        TOL,
    );
}

#[test]
fn max_pool_matches_pytorch_including_all_negative_padding() {
    let g = Golden::load("layers.safetensors");
    for p in ["maxpool", "maxpool2"] {
        let xs = shape4(&g.shape(&format!("{p}.x")));
        let ys = shape4(&g.shape(&format!("{p}.y")));
        let geom = pool::PoolGeom::new(xs.c, 3, 2, 1, xs.h, xs.w).unwrap();
        assert_eq!((geom.oh, geom.ow), (ys.h, ys.w));
        let x = nchw_to_nhwc(&g.f32(&format!("{p}.x")), xs);
        let mut y = vec![0.0; ys.len()];
        let mut arg = vec![0u32; ys.len()];
        pool::max_pool_forward(&geom, xs.n, &x, &mut y, &mut arg);
        assert_close(
            &format!("{p}.y"),
            &nhwc_to_nchw(&y, ys),
            &g.f32(&format!("{p}.y")),
            0.0,
        );
        let dy = nchw_to_nhwc(&g.f32(&format!("{p}.dy")), ys);
        let mut dx = vec![f32::NAN; xs.len()];
        pool::max_pool_backward(&geom, xs.n, &dy, &arg, &mut dx);
        assert_close(
            &format!("{p}.dx"),
            &nhwc_to_nchw(&dx, xs),
            &g.f32(&format!("{p}.dx")),
            TOL,
        );
    }
}

#[test]
fn global_avg_pool_relu_linear_and_cross_entropy_match_pytorch() {
    let g = Golden::load("layers.safetensors");
    let xs = shape4(&g.shape("avgpool.x"));
    let x = nchw_to_nhwc(&g.f32("avgpool.x"), xs);
    let mut y = vec![0.0; xs.n * xs.c];
    pool::global_avg_pool_forward(xs.n, xs.h * xs.w, xs.c, &x, &mut y);
    assert_close("avgpool.y", &y, &g.f32("avgpool.y"), TOL);
    let mut dx = vec![0.0; xs.len()];
    pool::global_avg_pool_backward(xs.n, xs.h * xs.w, xs.c, &g.f32("avgpool.dy"), &mut dx);
    assert_close(
        "avgpool.dx",
        &nhwc_to_nchw(&dx, xs),
        &g.f32("avgpool.dx"),
        TOL,
    );

    let x = g.f32("relu.x");
    let mut y = vec![0.0; x.len()];
    pointwise::relu_forward(&x, &mut y);
    assert_close("relu.y", &y, &g.f32("relu.y"), 0.0);
    let mut dx = vec![0.0; x.len()];
    pointwise::relu_backward(&y, &g.f32("relu.dy"), &mut dx);
    assert_close("relu.dx", &dx, &g.f32("relu.dx"), 0.0);

    let ws = g.shape("linear.weight");
    let n = g.shape("linear.x")[0];
    let mut rng = InitRng::seed_from_u64(0);
    let mut fc = Linear::new(ws[1], ws[0], &mut rng);
    fc.weight = g.f32("linear.weight");
    fc.bias = g.f32("linear.bias");
    let x = g.f32("linear.x");
    fc.forward(&x, n);
    assert_close("linear.y", &fc.out, &g.f32("linear.y"), TOL);
    fc.backward(&x, &g.f32("linear.dy"));
    assert_close("linear.dx", &fc.grad_input, &g.f32("linear.dx"), TOL);
    assert_close(
        "linear.dweight",
        &fc.grad_weight,
        &g.f32("linear.dweight"),
        TOL,
    );
    assert_close("linear.dbias", &fc.grad_bias, &g.f32("linear.dbias"), TOL);

    let logits = g.f32("ce.logits");
    let labels: Vec<usize> = g.i64("ce.labels").iter().map(|&l| l as usize).collect();
    let (n, k) = (labels.len(), logits.len() / labels.len());
    let mut dl = vec![0.0; logits.len()];
    let (l, _) = loss::softmax_cross_entropy(n, k, &logits, &labels, 0.0, &mut dl);
    assert_close("ce.loss", &[l], &g.f32("ce.loss"), TOL);
    assert_close("ce.dlogits", &dl, &g.f32("ce.dlogits"), TOL);
}
