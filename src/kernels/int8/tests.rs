//! Every path this CPU has against [`reference`], bit for bit, on ragged shapes: channel counts that are not
//! multiples of 4 or of the tile width, row counts that leave partial tiles, stride 2, padding whose border
//! positions see part of the kernel, batches above one, few rows (the tasks cut the panels) and many; with each
//! residual kind, both output kinds, ReLU on and off.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    g: ConvGeom,
    n: usize,
    x: Vec<u8>,
    w: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    res_u8: Vec<u8>,
    res_f32: Vec<f32>,
}

/// `(cin, cout, k, stride, pad, h, w, n)`
type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

/// A convolution of `shape` for `path`: activations up to its `qmax`, weights up to its `wmax` in magnitude.
fn case(shape: Shape, path: Path, seed: u64) -> Case {
    let (qmax, wmax) = (path.qmax(), path.wmax() as i8);
    let (cin, cout, k, stride, pad, h, w, n) = shape;
    let g = ConvGeom::new(cin, cout, k, stride, pad, h, w).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = n * g.oh * g.ow;
    let x = (0..n * h * w * cin)
        .map(|_| rng.random_range(0..=qmax))
        .collect();
    let wts = (0..k * k * cin * cout)
        .map(|_| rng.random_range(-wmax..=wmax))
        .collect();
    let bias = (0..cout).map(|_| rng.random_range(-5000..5000)).collect();
    // Scales that map the sums' spread (about √(k²·cin)·128·73) onto a few hundred steps, so that the rounding
    // and both clamps are all met.
    let spread = ((k * k * cin) as f32).sqrt() * 128.0 * 73.0;
    let scale = (0..cout)
        .map(|_| rng.random_range(50.0..400.0) / spread)
        .collect();
    let res_u8 = (0..rows * cout)
        .map(|_| rng.random_range(0..=qmax))
        .collect();
    let res_f32 = (0..rows * cout)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect();
    Case {
        g,
        n,
        x,
        w: wts,
        bias,
        scale,
        res_u8,
        res_f32,
    }
}

const SHAPES: [Shape; 13] = [
    (16, 64, 1, 1, 0, 5, 7, 2),
    (64, 256, 1, 1, 0, 4, 4, 3),
    (24, 40, 1, 2, 0, 9, 7, 2),
    (17, 19, 3, 1, 1, 6, 5, 2),
    (32, 72, 3, 2, 1, 9, 9, 3),
    (3, 16, 7, 2, 3, 12, 11, 2),
    (130, 66, 3, 1, 1, 3, 3, 5),
    (8, 128, 3, 1, 1, 1, 1, 7),
    (64, 64, 3, 1, 1, 8, 8, 4),
    // Rows enough for blocks of whole tiles over every panel (the others cut the panels among tasks).
    (8, 80, 3, 1, 1, 30, 31, 2),
    // AMX reads the rows of a 1×1 convolution in place when its channels are a multiple of 64: whole blocks of
    // 32 rows (and a half panel of 16 columns), and a last partial block gathered.
    (128, 48, 1, 1, 0, 8, 8, 2),
    (192, 40, 1, 1, 0, 7, 7, 1),
    // The register tiles read a convolution of few channels and several taps from gathered rows (the stem:
    // whole kernel rows copied at once, and per tap at the borders).
    (4, 64, 7, 2, 3, 20, 19, 2),
];

#[test]
fn every_path_matches_the_reference_bit_for_bit() {
    let paths: Vec<Path> = Path::ALL.into_iter().filter(|p| p.available()).collect();
    assert!(paths.contains(&Path::Portable));
    for path in paths {
        for (s, &shape) in SHAPES.iter().enumerate() {
            let c = case(shape, path, s as u64);
            let rows = c.n * c.g.oh * c.g.ow;
            let len = rows * c.g.cout;
            let packed = pack(path, c.g.kh * c.g.kw, c.g.cin, c.g.cout, &c.w);
            let residuals = [
                Residual::None,
                Residual::U8 {
                    values: &c.res_u8,
                    scale: 0.7,
                },
                Residual::F32 {
                    values: &c.res_f32,
                    scale: 40.0,
                },
            ];
            for (r, residual) in residuals.into_iter().enumerate() {
                let relu = r != 1;
                let rq = Requant {
                    bias: &c.bias,
                    scale: &c.scale,
                    residual,
                    relu,
                    qmax: path.qmax(),
                };
                let (mut want, mut got) = (vec![0u8; len], vec![1u8; len]);
                reference::conv(&c.g, c.n, &c.x, &c.w, &rq, Output::U8(&mut want));
                conv(&c.g, c.n, &c.x, &packed, &rq, Output::U8(&mut got));
                assert!(
                    want == got,
                    "{path:?} {shape:?} residual {r}: u8 outputs differ"
                );
                let clamped = want.iter().filter(|&&v| v == 0 || v == path.qmax()).count();
                assert!(
                    clamped < len,
                    "{shape:?}: every output clamped, nothing compared"
                );
                let (mut want, mut got) = (vec![0f32; len], vec![1f32; len]);
                reference::conv(&c.g, c.n, &c.x, &c.w, &rq, Output::F32(&mut want));
                conv(&c.g, c.n, &c.x, &packed, &rq, Output::F32(&mut got));
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{path:?} {shape:?} residual {r}: f32 outputs differ");
            }
            // The shortcut in the output, written over: the same bytes as with it apart, on the reference too.
            let rq = |residual| Requant {
                bias: &c.bias,
                scale: &c.scale,
                residual,
                relu: true,
                qmax: path.qmax(),
            };
            let apart = rq(Residual::U8 {
                values: &c.res_u8,
                scale: 0.7,
            });
            let over = rq(Residual::InOutput { scale: 0.7 });
            let mut want = vec![0u8; len];
            conv(&c.g, c.n, &c.x, &packed, &apart, Output::U8(&mut want));
            let (mut reference_over, mut got) =
                (c.res_u8[..len].to_vec(), c.res_u8[..len].to_vec());
            reference::conv(
                &c.g,
                c.n,
                &c.x,
                &c.w,
                &over,
                Output::U8(&mut reference_over),
            );
            conv(&c.g, c.n, &c.x, &packed, &over, Output::U8(&mut got));
            assert!(
                want == reference_over,
                "{path:?} {shape:?}: the reference over the shortcut differs"
            );
            assert!(
                want == got,
                "{path:?} {shape:?}: written over the shortcut, outputs differ"
            );
        }
    }
}

/// The reference is the convolution: a 1×1 product checked against sums written out by hand.
#[test]
fn the_reference_sums_and_requantizes_as_documented() {
    let g = ConvGeom::new(2, 1, 1, 1, 0, 1, 2).unwrap();
    let x = [10u8, 20, 30, 40];
    let w = [3i8, -1];
    // Pixel 0: 10·3 − 20 = 10; pixel 1: 90 − 40 = 50. Plus bias −1, times 0.5: 4.5 → 4, 24.5 → 24 (half to
    // even); with bias 1: 5.5 → 6, 25.5 → 26.
    let rq = Requant {
        bias: &[-1],
        scale: &[0.5],
        residual: Residual::None,
        relu: true,
        qmax: 255,
    };
    let mut y = [0u8; 2];
    reference::conv(&g, 1, &x, &w, &rq, Output::U8(&mut y));
    assert_eq!(y, [4, 24]);
    let rq = Requant { bias: &[1], ..rq };
    reference::conv(&g, 1, &x, &w, &rq, Output::U8(&mut y));
    assert_eq!(y, [6, 26]);
    // A residual of 200·2 takes pixel 1 past qmax 127; a negative one and the ReLU take pixel 0 to 0.
    let rq = Requant {
        residual: Residual::F32 {
            values: &[-9.0, 200.0],
            scale: 2.0,
        },
        qmax: 127,
        ..rq
    };
    reference::conv(&g, 1, &x, &w, &rq, Output::U8(&mut y));
    assert_eq!(y, [0, 127]);
}

/// A padded tap reads the weights' `pad` (the stem's input zero points, one per channel): the same outputs as
/// the reference on the input padded with those values explicitly, on every path.
#[test]
fn padded_taps_read_the_input_zero_points() {
    // Three channels read in place, four gathered (see `rows`).
    let cases = Path::ALL
        .into_iter()
        .filter(|p| p.available())
        .flat_map(|p| [(p, 3), (p, 4)]);
    for (path, cin) in cases {
        let shape = (cin, 64, 7, 2, 3, 13, 11, 2);
        let (cin, cout, k, stride, pad, h, w, n) = shape;
        let c = case(shape, path, 11);
        let zero_points: Vec<u8> = [path.qmax() / 2, 3, path.qmax(), 60][..cin].to_vec();
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let mut padded: Vec<u8> = (0..n * hp * wp)
            .flat_map(|_| zero_points.iter().copied())
            .collect();
        for img in 0..n {
            for y in 0..h {
                let from = ((img * h + y) * w) * cin;
                let to = ((img * hp + y + pad) * wp + pad) * cin;
                padded[to..to + w * cin].copy_from_slice(&c.x[from..from + w * cin]);
            }
        }
        let gp = ConvGeom::new(cin, cout, k, stride, 0, hp, wp).unwrap();
        assert_eq!((gp.oh, gp.ow), (c.g.oh, c.g.ow));
        let rq = Requant {
            bias: &c.bias,
            scale: &c.scale,
            residual: Residual::None,
            relu: true,
            qmax: path.qmax(),
        };
        let len = n * c.g.oh * c.g.ow * cout;
        let (mut want, mut got) = (vec![0u8; len], vec![1u8; len]);
        reference::conv(&gp, n, &padded, &c.w, &rq, Output::U8(&mut want));
        let mut packed = pack(path, k * k, cin, cout, &c.w);
        packed.pad = zero_points.clone();
        conv(&c.g, n, &c.x, &packed, &rq, Output::U8(&mut got));
        assert!(want == got, "{path:?} cin {cin}: padded taps differ");
        // Zeros instead would differ: the test sees the padding.
        packed.pad.clear();
        conv(&c.g, n, &c.x, &packed, &rq, Output::U8(&mut got));
        assert!(
            want != got,
            "{path:?} cin {cin}: the zero points made no difference"
        );
    }
}

/// A shortcut computed inside the block's last convolution is bit for bit the two convolutions it replaces: the
/// shortcut into an f32 tensor, then the last convolution adding it; on every path. Shapes: rows read in place
/// (on AMX: 1×1 over 64 channels) and gathered (stride 2, ragged channels), partial blocks and tiles, few rows
/// (the panels cut among tasks; on AMX the rows gathered for all of them), weights too large for AMX's
/// blocks-outside order, and a 3×3 last convolution (the chapter's block).
#[test]
fn a_shortcut_computed_alongside_is_the_two_convolutions() {
    // (main cin, cout, main k, out h = w, n, shortcut cin, shortcut stride)
    let cases = [
        (64, 48, 1, 6, 2, 64, 1),
        (64, 256, 1, 6, 2, 40, 2),
        (17, 200, 1, 3, 1, 24, 2),
        (1024, 320, 1, 7, 2, 64, 2),
        (32, 40, 3, 5, 2, 16, 2),
    ];
    let paths = Path::ALL.into_iter().filter(|p| p.available());
    for path in paths {
        for (s, &(cin, cout, k, h, n, sc_cin, stride)) in cases.iter().enumerate() {
            shortcut_alongside(path, s, (cin, cout, k, h, n, sc_cin, stride));
        }
    }
}

fn shortcut_alongside(
    path: Path,
    s: usize,
    (cin, cout, k, h, n, sc_cin, stride): (usize, usize, usize, usize, usize, usize, usize),
) {
    let q = path.qmax();
    let main = case((cin, cout, k, 1, k / 2, h, h, n), path, 100 + s as u64);
    let sc_h = (h - 1) * stride + 1;
    let side = case(
        (sc_cin, cout, 1, stride, 0, sc_h, sc_h, n),
        path,
        200 + s as u64,
    );
    assert_eq!((side.g.oh, side.g.ow), (h, h));
    let rows = n * h * h;
    let wm = pack(path, k * k, cin, cout, &main.w);
    let ws = pack(path, 1, sc_cin, cout, &side.w);
    let rq_side = Requant {
        bias: &side.bias,
        scale: &side.scale,
        residual: Residual::None,
        relu: false,
        qmax: q,
    };
    let mut shortcut = vec![0f32; rows * cout];
    conv(
        &side.g,
        n,
        &side.x,
        &ws,
        &rq_side,
        Output::F32(&mut shortcut),
    );
    let residual_scale = 0.3;
    let sc = Shortcut {
        g: &side.g,
        x: &side.x,
        w: &ws,
        bias: &side.bias,
        scale: &side.scale,
        residual_scale,
    };
    let rq = |residual| Requant {
        bias: &main.bias,
        scale: &main.scale,
        residual,
        relu: true,
        qmax: q,
    };
    let added = rq(Residual::F32 {
        values: &shortcut,
        scale: residual_scale,
    });
    let (mut want, mut got) = (vec![0u8; rows * cout], vec![1u8; rows * cout]);
    conv(&main.g, n, &main.x, &wm, &added, Output::U8(&mut want));
    conv_with_shortcut(
        &main.g,
        n,
        &main.x,
        &wm,
        &rq(Residual::None),
        Output::U8(&mut got),
        &sc,
    );
    assert!(want == got, "{path:?} case {s}: u8 outputs differ");
    let clamped = want.iter().filter(|&&v| v == 0 || v == q).count();
    assert!(
        clamped < want.len() * 9 / 10,
        "{path:?} case {s}: {clamped} of {} clamped",
        want.len()
    );
    let (mut want, mut got) = (vec![0f32; rows * cout], vec![1f32; rows * cout]);
    conv(&main.g, n, &main.x, &wm, &added, Output::F32(&mut want));
    conv_with_shortcut(
        &main.g,
        n,
        &main.x,
        &wm,
        &rq(Residual::None),
        Output::F32(&mut got),
        &sc,
    );
    let same = want
        .iter()
        .zip(&got)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{path:?} case {s}: f32 outputs differ");
}
