//! The training curve as a small self-contained SVG.

use super::EpochMetrics;

/// A small self-contained SVG of loss, train accuracy and test accuracy per epoch.
pub fn curve_svg(history: &[EpochMetrics]) -> String {
    let (w, h, pad) = (640.0f64, 400.0f64, 50.0f64);
    let n = history.len().max(1);
    let x = |e: usize| {
        pad + if n == 1 {
            (w - 2.0 * pad) / 2.0
        } else {
            (e - 1) as f64 * (w - 2.0 * pad) / (n - 1) as f64
        }
    };
    let ymax = history.iter().map(|m| m.loss).fold(1.0f64, f64::max);
    let y = |v: f64| h - pad - v / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - pad,
        r = w - pad
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            pad - 4.0,
            y(v) + 4.0
        );
    }
    for m in history {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(m.epoch),
            h - pad + 16.0,
            m.epoch
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n",
        w / 2.0,
        h - 10.0
    );
    type Series = (&'static str, &'static str, fn(&EpochMetrics) -> f64);
    let series: [Series; 3] = [
        ("train loss", "#1f77b4", |m| m.loss),
        ("train acc", "#ff7f0e", |m| m.train_acc),
        ("test acc", "#2ca02c", |m| m.test_acc),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = history
            .iter()
            .map(|m| format!("{:.1},{:.1}", x(m.epoch), y(f(m))))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        for m in history {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                x(m.epoch),
                y(f(m))
            );
        }
        let ly = pad + 16.0 * i as f64;
        s += &format!("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - pad - 110.0, ly - 4.0, w - pad - 94.0, ly);
    }
    s + "</svg>\n"
}
