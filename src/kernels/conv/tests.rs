//! Every algorithm the plan picks, run through [`ConvPlan`] (forward, both gradients, the eval-mode affine
//! epilogue) and called directly (the portable im2col path, the direct kernels in place and packed), against
//! [`reference`].

use super::im2col::{conv_gemm, gather_live_weights};
use super::*;

#[test]
fn direct_and_im2col_paths_match_a_naive_convolution() {
    // (cin, cout, k, stride, pad, h, w, n): odd planes, stride 2, dead taps (1×1 plane), a 1×1 stride-2
    // shortcut, a 5×5 kernel, row counts that leave partial 6-row tiles, the single-channel stem, and 128
    // channels (the direct kernel splits its taps in two passes), and planes wide enough for the
    // channel-major weight gradient (with channel counts that leave partial 6-channel tiles); then small
    // planes with batches of 24 or more (position-major tiles): a partial last tile, stride 2, dead taps,
    // two tap passes, and border positions of a padded 1×1 conv that see no input at all. The 3×3 stride-1
    // convs over 8×8, 12×12 and 7×7 planes with 64 tiles or more run forward, both gradients and the eval
    // affine on the Winograd kernels (the 7×7 one with tiles partly outside the plane). Then 64 and 128
    // output channels (the AVX-512 tile over four panels): position-major, a padded 1×1 whose border
    // positions see no input, stride 2. Last, the kernel-row tiles of narrow inputs: torchvision's stem on
    // small images (kernel rows in the padding, rows cut left and right, 16-, 64- and 128-wide outputs, odd
    // planes) and a 3×3 stem over six channels. Then a bottleneck's 1×1 expansion on the 1×1 tiles.
    let cases = [
        (16, 16, 3, 1, 1, 5, 7, 3),
        (32, 48, 3, 2, 1, 9, 9, 2),
        (16, 32, 3, 1, 1, 1, 1, 7),
        (24, 16, 1, 2, 0, 6, 6, 2),
        (16, 16, 5, 1, 2, 4, 4, 3),
        (64, 64, 3, 1, 1, 8, 8, 4),
        (1, 16, 7, 2, 3, 12, 12, 2),
        (128, 32, 3, 1, 1, 3, 3, 3),
        (16, 16, 3, 1, 1, 12, 12, 5),
        (20, 32, 3, 1, 1, 9, 10, 2),
        (16, 32, 3, 1, 1, 3, 3, 25),
        (32, 16, 3, 2, 1, 6, 6, 24),
        (16, 16, 3, 1, 1, 1, 1, 30),
        (128, 32, 3, 1, 1, 3, 3, 26),
        (16, 16, 1, 1, 1, 2, 2, 24),
        (16, 32, 3, 1, 1, 7, 7, 6),
        (32, 64, 3, 1, 1, 3, 3, 25),
        (16, 64, 1, 1, 1, 2, 2, 24),
        (64, 128, 3, 2, 1, 9, 9, 2),
        (3, 64, 7, 2, 3, 20, 18, 2),
        (3, 16, 7, 2, 3, 13, 9, 1),
        (6, 32, 3, 1, 1, 7, 5, 3),
        (3, 128, 7, 2, 3, 11, 11, 1),
        (32, 48, 1, 1, 0, 5, 5, 3),
    ];
    let mut in_place = Vec::new();
    for (cin, cout, k, s, p, h, w, n) in cases {
        let g = ConvGeom::new(cin, cout, k, s, p, h, w).unwrap();
        // The narrow cases reach the kernel-row tiles (the single-channel stem stays on im2col).
        if cin < tile::MIN_CIN && tile::cpu_supported() && k > 1 && cin > 1 {
            assert_eq!(ConvPlan::new(g, n).forward, Algo::KernelRows, "{g}");
        }
        let x: Vec<f32> = (0..n * h * w * cin)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 97.0)
            .collect();
        let wt: Vec<f32> = (0..k * k * cin * cout)
            .map(|i| ((i * 104729 % 197) as f32 - 98.0) / 491.0)
            .collect();
        let want = reference::forward(&g, n, &x, &wt, &[]);
        let close = |got: &[f32], what: &str| {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{what} {cin}->{cout} k{k} s{s} p{p} {h}x{w}: y[{i}] = {a}, want {b}"
                );
            }
        };
        // Portable path: im2col + gemm over the live taps.
        let plan = ConvPlan::new(g, n);
        // Enough for the plan and for the im2col path tried first.
        let im2col_len = g.cols_len(n) + g.live_patch_len() * g.cout;
        let mut ws = vec![0.0f32; plan.workspace_len().max(im2col_len)];
        let mut y = vec![0.0f32; want.len()];
        if g.all_taps_live() {
            conv_gemm(&g, n, &x, &wt, &mut y, false, &mut ws);
        } else {
            let (wl, cols) = ws.split_at_mut(g.live_patch_len() * g.cout);
            gather_live_weights(&g, &wt, wl);
            conv_gemm(&g, n, &x, wl, &mut y, false, cols);
        }
        close(&y, "im2col");
        // The training forward (direct, Winograd or im2col, as dispatched), with a bias.
        let bias: Vec<f32> = (0..cout).map(|co| co as f32 / 7.0 - 1.0).collect();
        let mut yb = vec![f32::NAN; want.len()];
        plan.forward(&x, &wt, &bias, &mut yb, &mut ws);
        for (i, (a, b)) in yb.iter().zip(&want).enumerate() {
            let v = b + bias[i % cout];
            assert!(
                (a - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "forward {cin}->{cout} k{k} s{s} p{p} {h}x{w}: y[{i}] = {a}, want {v}"
            );
        }
        // Weight and input gradients through the plan's backward (the channel-major kernel and the direct
        // GEMM where they apply), dy = y.
        let want_dw = reference::weight_grad(&g, n, &x, &want);
        let want_dx = reference::input_grad(&g, n, &want, &wt);
        let mut dw = vec![f32::NAN; want_dw.len()];
        let mut db = vec![0.0f32; cout];
        let mut dx = vec![f32::NAN; want_dx.len()];
        plan.backward(&x, &wt, &want, &mut dw, &mut db, Some(&mut dx), &mut ws);
        for (i, (a, b)) in dx.iter().zip(&want_dx).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "dx {cin}->{cout} k{k} s{s} p{p} {h}x{w}: dx[{i}] = {a}, want {b}"
            );
        }
        for (i, (a, b)) in dw.iter().zip(&want_dw).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "dw {cin}->{cout} k{k} s{s} p{p} {h}x{w}: dw[{i}] = {a}, want {b}"
            );
        }
        // Eval-mode conv + batch norm + ReLU in one call (direct or Winograd epilogue, or a second pass).
        let scale: Vec<f32> = (0..cout).map(|co| 0.5 + co as f32 / 9.0).collect();
        let shift: Vec<f32> = (0..cout).map(|co| 0.3 - co as f32 / 11.0).collect();
        for relu in [false, true] {
            let mut ya = vec![f32::NAN; want.len()];
            plan.forward_affine(&x, &wt, None, &bias, &scale, &shift, relu, &mut ya, &mut ws);
            for (i, (a, b)) in ya.iter().zip(&want).enumerate() {
                let co = i % cout;
                let v = (b + bias[co]) * scale[co] + shift[co];
                let v = if relu { v.max(0.0) } else { v };
                assert!(
                    (a - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "affine relu={relu} {cin}->{cout} k{k}: y[{i}] = {a}, want {v}"
                );
            }
        }
        // The compiled network's call: prepared weights, bias, a shortcut added and the ReLU, in the epilogue of
        // whichever algorithm the plan runs.
        let residual: Vec<f32> = (0..want.len())
            .map(|i| ((i * 31 % 89) as f32 - 44.0) / 37.0)
            .collect();
        // The training plan's forward and the inference plan's (Winograd also on few tiles).
        for plan in [plan, ConvPlan::inference(g, n, false)] {
            let mut prepared = vec![0.0f32; plan.prepared_len().unwrap_or(0)];
            plan.prepare_weights(&wt, &mut prepared);
            let prepared = plan.prepared_len().map(|_| &prepared[..]);
            let mut ws_fwd = vec![f32::NAN; plan.forward_workspace_len()];
            let mut yr = vec![f32::NAN; want.len()];
            let epilogue = Epilogue::bias(&bias, Some(&residual), true);
            plan.forward_with(&x, &wt, prepared, epilogue, &mut yr, &mut ws_fwd);
            for (i, (a, b)) in yr.iter().zip(&want).enumerate() {
                let v = (b + bias[i % cout] + residual[i]).max(0.0);
                assert!(
                    (a - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "residual {} {cin}->{cout} k{k} s{s} p{p} {h}x{w} n{n}: y[{i}] = {a}, want {v}",
                    plan.forward
                );
            }
            // Written over the shortcut (the output holds it on entry), where the algorithm allows: the same
            // bits.
            if plan.adds_residual_in_place() {
                let mut yo = residual.clone();
                let epilogue = Epilogue::bias_onto_output(&bias, true);
                plan.forward_with(&x, &wt, prepared, epilogue, &mut yo, &mut ws_fwd);
                assert!(
                    yo.iter().zip(&yr).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "residual in place {} {cin}->{cout} k{k} s{s} p{p} {h}x{w} n{n}",
                    plan.forward
                );
                in_place.push(plan.forward);
            }
        }
        if !(direct::handles(&g) && tile::cpu_supported()) {
            continue;
        }
        let w_in_place = direct::Weights::Hwio(&wt);
        direct::conv_direct(
            &g,
            n,
            &x,
            w_in_place,
            &mut y,
            false,
            Epilogue::default(),
            direct::by_position(&g, n),
        );
        close(&y, "direct");
        // Accumulating onto a bias-filled output adds exactly the bias.
        let mut y2 = vec![0.5f32; want.len()];
        direct::conv_direct(
            &g,
            n,
            &x,
            w_in_place,
            &mut y2,
            true,
            Epilogue::default(),
            direct::by_position(&g, n),
        );
        // Packed weights give the same sums.
        let mut packed = vec![0.0f32; direct::packed_len(&g)];
        direct::pack_weights(&g, &wt, &mut packed);
        let mut y3 = vec![f32::NAN; want.len()];
        let w_packed = direct::Weights::Packed(&packed);
        direct::conv_direct(
            &g,
            n,
            &x,
            w_packed,
            &mut y3,
            false,
            Epilogue::default(),
            direct::by_position(&g, n),
        );
        close(&y3, "direct packed");
        for (a, b) in y2.iter().zip(&y) {
            assert!((a - (b + 0.5)).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
    // Both kinds of kernel that may write over the shortcut did.
    if tile::cpu_supported() {
        assert!(in_place.iter().any(|a| matches!(a, Algo::Winograd(_))));
        assert!(in_place.iter().any(|a| matches!(a, Algo::Pointwise { .. })));
    }
}
