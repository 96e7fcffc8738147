//! The page of `resnet serve` in a real browser: Debian's headless chromium, driven over the DevTools protocol,
//! what `tools/check_page.py --why` checks by hand. A small model and a PNG are written, the server is started on a
//! free loopback port, `/` is opened at 900×650 and the PNG is dropped on the drop zone the way a file dragged from
//! the desktop arrives (a `drop` event whose DataTransfer holds the file). Then: no error is shown, the image is
//! displayed, one bar per class up to five, in decreasing order and summing to at most 100 %, the classes those of
//! `resnet predict --json --topk 5` for the same file; the model line is above the drop zone, the image (at least
//! 200 px) below it and left of the bars. A screenshot has the viewport's size. Ticking "why?" lays the Grad-CAM
//! heatmap exactly over the image (same natural size, same box), for the page's top-1 class, the class
//! `resnet predict --explain` names, and it shows in a second screenshot; unticking hides it, the image's pixels
//! as before. Nothing was fetched from another origin and no request failed.
//!
//! Without chromium the test says it skipped, except under CI (`CI` set), where it fails: CI installs chromium.

mod common;
use common::server::{model_file, picture, png, Server};
use headless_chrome::protocol::cdp::Emulation::SetDeviceMetricsOverride;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const VIEWPORT: (u32, u32) = (900, 650);
/// How long the page may take to reach a state (the model line, the bars, the heatmap). A backward pass of the
/// small model takes milliseconds: this is for a loaded machine, and bounds a hung page.
const WAIT: Duration = Duration::from_secs(20);

/// Debian's chromium, or one on PATH.
fn chromium() -> Option<PathBuf> {
    if Path::new(CHROMIUM).is_file() {
        return Some(CHROMIUM.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// The value of the JavaScript expression `expr`, through JSON (the protocol returns objects by reference);
/// panics when it throws.
fn eval(tab: &Tab, expr: &str) -> Value {
    let wrapped = format!("JSON.stringify((() => ({expr}))())");
    let r = tab
        .evaluate(&wrapped, false)
        .unwrap_or_else(|e| panic!("evaluate {expr}: {e}"));
    match r.value {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap(),
        // `undefined` stringifies to nothing; an exception comes back as an object with a description.
        _ => panic!("{expr}: {}", r.description.unwrap_or("undefined".into())),
    }
}

/// Waits until `condition` (JavaScript) is true; fails after [`WAIT`] saying what it waited for.
fn wait_for(tab: &Tab, what: &str, condition: &str) {
    let deadline = Instant::now() + WAIT;
    while eval(tab, condition) != Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "{WAIT:?} without {what}; the page's error line: {}",
            eval(tab, "document.getElementById('error').textContent")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An element's box in CSS pixels of the viewport: `[x, y, width, height]`.
fn rect(tab: &Tab, id: &str) -> [f64; 4] {
    let v = eval(
        tab,
        &format!(
            "(r => [r.x, r.y, r.width, r.height])(document.getElementById('{id}').getBoundingClientRect())"
        ),
    );
    serde_json::from_value(v).unwrap()
}

/// A screenshot of the viewport, written to `path` and decoded: it must be a PNG of the viewport's size.
fn screenshot(tab: &Tab, path: &Path) -> image::RgbaImage {
    let bytes = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    std::fs::write(path, &bytes).unwrap();
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgba8();
    assert_eq!(img.dimensions(), VIEWPORT, "{}", path.display());
    img
}

/// How many pixels of the box `r` (CSS pixels, the device's scale being 1) differ between `a` and `b`, of how many.
fn differing(a: &image::RgbaImage, b: &image::RgbaImage, r: [f64; 4]) -> (usize, usize) {
    let (x0, y0) = (r[0].ceil() as u32, r[1].ceil() as u32);
    let (x1, y1) = ((r[0] + r[2]).floor() as u32, (r[1] + r[3]).floor() as u32);
    let (mut n, mut total) = (0, 0);
    for y in y0..y1.min(a.height()) {
        for x in x0..x1.min(a.width()) {
            n += usize::from(a.get_pixel(x, y) != b.get_pixel(x, y));
            total += 1;
        }
    }
    (n, total)
}

/// `resnet predict --json ARGS… IMAGE`, parsed.
fn predict(weights: &Path, args: &[&str], image: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["--threads", "2", "predict", "--json", "--weights"])
        .arg(weights)
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resnet predict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "resnet predict --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn a_dropped_image_gets_its_bars_and_why_overlays_the_heatmap() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no {CHROMIUM} nor chromium on PATH: .ci/run installs it (apt-get install chromium)"
        );
        println!(
            "tests/page.rs skipped: no {CHROMIUM} nor chromium on PATH (apt-get install chromium)"
        );
        return;
    };
    let started = Instant::now();
    let dir = common::scratch_dir("resnet-page-", "page");
    let weights = model_file(&dir, Some(32));
    // Not square, so that a heatmap or a box with width and height swapped shows.
    let image = dir.join("item.png");
    let bytes = png(&picture(3, 40, 36));
    std::fs::write(&image, &bytes).unwrap();
    let cli = predict(&weights, &["--topk", "5"], &image);
    let server = Server::spawn(&weights, 2, &[]);
    let origin = format!("http://{}", server.addr);

    let browser = Browser::new(LaunchOptions {
        path: Some(chromium),
        // Chromium will not start as root (as CI runs) with its sandbox on.
        sandbox: false,
        window_size: Some(VIEWPORT),
        // Each protocol call fails after this long without an answer, rather than hanging the test.
        idle_browser_timeout: Duration::from_secs(30),
        ..LaunchOptions::default()
    })
    .expect("launch chromium");
    let tab = browser.new_tab().expect("a tab");
    tab.set_default_timeout(WAIT);
    // The window size includes what headless chromium counts as its window's frame: the viewport is set itself,
    // at one device pixel per CSS pixel. (From JSON: the command's many optional fields are left out.)
    let metrics: SetDeviceMetricsOverride = serde_json::from_value(serde_json::json!({
        "width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false
    }))
    .unwrap();
    tab.call_method(metrics).expect("set the viewport");
    tab.navigate_to(&format!("{origin}/"))
        .and_then(|t| t.wait_until_navigated())
        .expect("open the page");
    // Screenshots are compared pixel for pixel with the boxes the page reports in CSS pixels.
    assert_eq!(
        eval(&tab, "[innerWidth, innerHeight, devicePixelRatio]"),
        serde_json::json!([VIEWPORT.0, VIEWPORT.1, 1]),
        "the viewport"
    );
    wait_for(
        &tab,
        "the model line",
        "document.getElementById('model').textContent.includes('parameters')",
    );

    // A file dragged from the desktop: dragenter, dragover, then a drop whose DataTransfer holds it.
    let data = serde_json::to_string(&resnet::serve::explain::base64(&bytes)).unwrap();
    eval(
        &tab,
        &format!(
            "(() => {{
            const bytes = Uint8Array.from(atob({data}), (c) => c.charCodeAt(0));
            const file = new File([bytes], 'item.png', {{ type: 'image/png' }});
            const dt = new DataTransfer();
            dt.items.add(file);
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop']) {{
                zone.dispatchEvent(new DragEvent(type, {{ dataTransfer: dt, bubbles: true, cancelable: true }}));
            }}
            return true;
        }})()"
        ),
    );
    wait_for(
        &tab,
        "the bars",
        "document.querySelector('#bars .row') !== null",
    );
    wait_for(
        &tab,
        "the image displayed",
        "(i => i.complete && i.naturalWidth > 0)(document.getElementById('preview'))",
    );
    let rows = eval(
        &tab,
        "[...document.querySelectorAll('#bars .row')].map(r => ({
            cls: r.dataset.class,
            width: parseFloat(r.querySelector('.bar').style.width),
            text: r.querySelector('.p').textContent }))",
    );
    let rows = rows.as_array().unwrap();
    let error = eval(&tab, "document.getElementById('error').textContent");
    assert_eq!(error, "", "the page shows an error");
    let model_line = eval(&tab, "document.getElementById('model').textContent");
    println!("model line: {}", model_line.as_str().unwrap());
    println!("bars: {rows:?}");

    let n_classes = cli["probabilities"].as_array().unwrap().len();
    assert_eq!(rows.len(), n_classes.min(5), "{rows:?}");
    let widths: Vec<f64> = rows.iter().map(|r| r["width"].as_f64().unwrap()).collect();
    assert!(
        widths.windows(2).all(|w| w[0] >= w[1]) && widths.iter().sum::<f64>() <= 100.5,
        "bar widths {widths:?}"
    );
    let classes: Vec<&str> = rows.iter().map(|r| r["cls"].as_str().unwrap()).collect();
    let cli_classes: Vec<&str> = cli["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["class"].as_str().unwrap())
        .collect();
    let top1 = classes[0];
    assert_eq!(
        top1, cli["class"],
        "the page's top-1 and `resnet predict`'s"
    );
    assert_eq!(
        classes, cli_classes,
        "the page's bars and `resnet predict`'s top 5"
    );

    // Layout: the model line above the drop zone; the image, at least 200 px, below the zone, left of the bars.
    let [m, d, p, b] = ["model", "drop", "preview", "bars"].map(|id| rect(&tab, id));
    assert!(
        m[1] + m[3] <= d[1],
        "the drop zone overlaps the model line: {m:?} {d:?}"
    );
    assert!(
        p[2] >= 200.0 && p[3] >= 200.0,
        "the image is shown too small: {p:?}"
    );
    assert!(
        d[1] + d[3] <= p[1] && p[0] + p[2] <= b[0],
        "overlap: drop {d:?}, image {p:?}, bars {b:?}"
    );

    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let plain = screenshot(&tab, &tmp.join("page.png"));

    // "why?": the heatmap over the image.
    tab.find_element("#why")
        .and_then(|e| e.click().map(|_| ()))
        .expect("tick why?");
    wait_for(
        &tab,
        "the heatmap",
        "(h => !h.hidden && h.complete && h.naturalWidth > 0)(document.getElementById('heat'))",
    );
    let heat_class = eval(&tab, "document.getElementById('heat').dataset.class");
    let natural = |id: &str| {
        eval(
            &tab,
            &format!("(i => [i.naturalWidth, i.naturalHeight])(document.getElementById('{id}'))"),
        )
    };
    let (heat_size, image_size) = (natural("heat"), natural("preview"));
    println!(
        "why?: {}; heatmap {heat_size} over the image {image_size}",
        eval(&tab, "document.getElementById('whynote').textContent")
    );
    assert_eq!(heat_class, top1, "the heatmap's class and the top-1");
    assert_eq!(
        image_size,
        serde_json::json!([40, 36]),
        "the image's own size"
    );
    assert_eq!(
        heat_size, image_size,
        "the heatmap's pixel size and the image's"
    );
    let preview = rect(&tab, "preview");
    assert_eq!(
        rect(&tab, "heat"),
        preview,
        "the heatmap's box and the image's"
    );
    let why = screenshot(&tab, &tmp.join("page-why.png"));
    let (n, total) = differing(&plain, &why, preview);
    println!("why?: {n} of the image box's {total} pixels changed");
    // The heatmap covers the image, not the letterbox (40×36 shown in a 224 px square): most of the box.
    assert!(
        2 * n > total,
        "the heatmap does not show: {n} of {total} pixels changed"
    );

    tab.find_element("#why")
        .and_then(|e| e.click().map(|_| ()))
        .expect("untick why?");
    wait_for(
        &tab,
        "the heatmap hidden after unticking why?",
        "document.getElementById('heat').hidden && !document.getElementById('why').checked",
    );
    let after = screenshot(&tab, &tmp.join("page-unticked.png"));
    assert_eq!(
        differing(&plain, &after, preview).0,
        0,
        "the image differs from before the heatmap"
    );
    assert_eq!(
        eval(&tab, "document.getElementById('error').textContent"),
        "",
        "the page shows an error after why?"
    );

    // Everything came from the server: the model, the prediction and the heatmap, answered 200. Chromium also
    // lists requests that failed (status 0), so a request elsewhere shows even without network.
    let fetched = eval(
        &tab,
        "performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])",
    );
    let fetched: Vec<(String, u64)> = serde_json::from_value(fetched).unwrap();
    let foreign: Vec<_> = fetched
        .iter()
        .filter(|(url, _)| !url.starts_with(&format!("{origin}/")) && !url.starts_with("blob:"))
        .collect();
    assert!(foreign.is_empty(), "fetched from elsewhere: {foreign:?}");
    // The browser asks for /favicon.ico on its own; the page names none, and the server has none (404).
    let favicon = format!("{origin}/favicon.ico");
    let failed: Vec<_> = fetched
        .iter()
        .filter(|(url, status)| *status != 200 && *url != favicon)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for path in ["/v1/model", "/v1/predict?topk=5", "/v1/explain"] {
        let url = format!("{origin}{path}");
        assert!(
            fetched.contains(&(url.clone(), 200)),
            "no {url} answered 200 in {fetched:?}"
        );
    }

    let explained = predict(
        &weights,
        &["--explain", dir.join("cam").to_str().unwrap()],
        &image,
    );
    assert_eq!(
        explained["explain"]["class"], heat_class,
        "`resnet predict --explain`'s class and the heatmap's"
    );
    println!(
        "PASS in {:.1} s: top-1 {top1} as `resnet predict`, heatmap for it; screenshots in {}",
        started.elapsed().as_secs_f64(),
        tmp.display()
    );
}
