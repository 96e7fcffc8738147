//! `resnet serve` from outside: the binary on an ephemeral loopback port, spoken to over raw HTTP/1.1 (so that a
//! test can also send what no client library would). Every endpoint, dynamic batching (bit for bit the logits of a
//! batch of one), each class of bad request, overload (503 with Retry-After) and graceful shutdown on SIGTERM.

mod common;
use common::server::{model_file, picture, pipeline, png, Server, CLASSES};
use resnet::compiled::loaded::InferenceNet;
use resnet::compiled::CompiledNet;
use resnet::infer::Model;
use resnet::nn::{ArchName, ResNet, ResNetConfig, Stem};
use resnet::serve::{BatchOptions, Batcher, Metrics};
use resnet::Shape4;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asserts that `got` (an image's logits from a batch) is bit for bit `want` (from a batch of one).
fn assert_same_logits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(
        got, want,
        "{what}: batched logits differ from a batch of one's"
    );
}

/// With plans chosen per batch size (`--batch-invariant=false`), the algorithms may differ and so may the last
/// bits: `got` equals `want` to f32 rounding, and the classes rank the same.
fn assert_close_logits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
            "{what}: batched logits {got:?}, alone {want:?}"
        );
    }
    let rank = |v: &[f32]| resnet::infer::ranked(&resnet::infer::softmax(v));
    assert_eq!(
        rank(got),
        rank(want),
        "{what}: the classes rank differently"
    );
}

/// The library's logits for one encoded image, batch of one: what `predict` computes.
fn single_logits(model: &mut Model, bytes: &[u8]) -> Vec<f32> {
    let img = resnet::data::image_file::decode_image(bytes, Path::new("x"), 3).unwrap();
    let (x, xs) = model.input(img, "x").unwrap();
    model.logits(&x, xs, false).unwrap()
}

#[test]
fn batched_logits_are_bit_identical_to_single_images() {
    // Bottleneck and basic blocks, small and ImageNet stems: each image's logits from one forward pass of up
    // to 8 images are those of a forward pass of that image alone, bit for bit with batch-invariant plans (the
    // server's default), to rounding without.
    let configs = [
        ResNetConfig {
            widths: vec![8, 16, 16, 32],
            stem: Stem::Small,
            ..ResNetConfig::named(ArchName::Resnet18, 3, 5)
        },
        ResNetConfig {
            widths: vec![8, 8, 16, 16],
            layers: vec![1, 1, 1, 1],
            ..ResNetConfig::named(ArchName::Resnet50, 3, 5)
        },
        ResNetConfig::named(ArchName::Chapter, 3, 5),
    ];
    for (k, (config, invariant)) in configs
        .into_iter()
        .flat_map(|c| [(c.clone(), true), (c, false)])
        .enumerate()
    {
        let name = format!("{} (batch-invariant: {invariant})", config.name());
        let trained = ResNet::new(config, 3).unwrap();
        let mut net = CompiledNet::new(&trained, None).unwrap();
        net.set_batch_invariant(invariant);
        let mut model = Model {
            net: InferenceNet::F32(Box::new(net)),
            params: trained.num_params(),
            preprocess: pipeline(Some(40)),
            names: (0..5).map(|i| format!("c{i}")).collect(),
            path: PathBuf::from("memory"),
            trained_size: None,
        };
        let images: Vec<Vec<u8>> = (0..7)
            .map(|i| png(&picture(i + 10 * k as u32, 50, 45)))
            .collect();
        let want: Vec<Vec<f32>> = images
            .iter()
            .map(|b| single_logits(&mut model, b))
            .collect();
        let inputs: Vec<(Vec<f32>, Shape4)> = images
            .iter()
            .map(|b| {
                let img = resnet::data::image_file::decode_image(b, Path::new("x"), 3).unwrap();
                model.input(img, "x").unwrap()
            })
            .collect();
        let metrics = Arc::new(Metrics::new(8));
        let opts = BatchOptions {
            max_batch: 8,
            max_batch_pixels: 1 << 20,
            max_wait: Duration::from_millis(500),
            queue: 16,
            tta: false,
        };
        let (batcher, worker) = Batcher::start(model, opts, metrics.clone());
        // Announced together (as concurrent requests decoding), queued one after another.
        let announced: Vec<_> = inputs.iter().map(|_| batcher.announce()).collect();
        let replies: Vec<_> = inputs
            .into_iter()
            .zip(announced)
            .map(|((x, xs), a)| batcher.submit(a, x, xs).ok().unwrap())
            .collect();
        for (i, reply) in replies.into_iter().enumerate() {
            let got = reply.blocking_recv().unwrap().unwrap();
            let what = format!("{name}: image {i}");
            if invariant {
                assert_same_logits(&got, &want[i], &what);
            } else {
                assert_close_logits(&got, &want[i], &what);
            }
        }
        drop(batcher);
        worker.join().unwrap();
        let text = metrics.render();
        assert!(
            text.contains("resnet_forward_passes_total 1\n"),
            "{name}: 7 images queued at once within 500 ms should share one forward pass:\n{text}"
        );
    }
}

impl Server {
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(self.addr, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    fn predict(&self, query: &str, body: &[u8]) -> Reply {
        self.request("POST", &format!("/v1/predict{query}"), &[], body)
    }

    /// Asserts that `GET /metrics` answers 200 with every one of `needles` in its text.
    fn assert_metrics(&self, needles: &[&str]) {
        let m = self.get("/metrics");
        assert_eq!(m.status, 200);
        let text = String::from_utf8(m.body).unwrap();
        for needle in needles {
            assert!(text.contains(needle), "`{needle}` not in /metrics:\n{text}");
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a JSON error answer with `status` whose message contains `says`.
    fn expect_error(&self, status: u16, says: &str) {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(v["status"], status, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(says), "expected `{says}` in `{msg}`");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), the whole answer read.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server that answers before reading the whole body (413) may close the socket under the writer.
    let _ = s.write_all(body);
    read_reply(s)
}

fn read_reply(s: TcpStream) -> Reply {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    let _ = r.read_to_end(&mut body);
    Reply {
        status,
        headers,
        body,
    }
}

/// A multipart/form-data body of `parts` (file name, bytes) and its content type.
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "resnet-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn logits_of(prediction: &Value) -> Vec<f32> {
    prediction["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// The library model the server loads, for reference answers.
fn reference(weights: &Path) -> Model {
    Model::load(weights, None, None).unwrap()
}

#[test]
fn endpoints_answer_and_predictions_match_the_library() {
    let dir = common::scratch_dir("resnet-serve-", "endpoints");
    let weights = model_file(&dir, Some(32));
    let mut lib = reference(&weights);
    let server = Server::spawn(&weights, 2, &[]);

    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains("<title>resnet serve</title>") && html.contains("/v1/predict"));
    // The "why?" toggle asks /v1/explain (tools/check_page.py --why drives it in a browser).
    assert!(html.contains("id=\"why\"") && html.contains("/v1/explain"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page fetches nothing from elsewhere"
    );

    let health = server.get("/healthz");
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, "ok".into())
    );

    let info = server.get("/v1/model").json();
    assert_eq!(info["classes"], serde_json::json!(CLASSES));
    assert_eq!(info["num_classes"], 4);
    assert_eq!(info["input_channels"], 3);
    assert_eq!(info["input_size"], serde_json::json!([32, 32]));
    assert_eq!(info["trained_size"], 32);
    assert_eq!(info["parameters"], lib.params);
    assert_eq!(info["architecture"], lib.net.config().name());
    assert_eq!(info["precision"], "f32");

    // A raw PNG body: the library's logits, bit for bit, and its ranking.
    let a = png(&picture(1, 40, 40));
    let want = single_logits(&mut lib, &a);
    let r = server.predict("?topk=2&logits=true", &a);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let p = &v["predictions"][0];
    assert_eq!(logits_of(p), want);
    let probs = resnet::infer::softmax(&want);
    let order = resnet::infer::ranked(&probs);
    assert_eq!(p["index"], order[0]);
    assert_eq!(p["class"], CLASSES[order[0]]);
    let top = p["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[1]["class"], CLASSES[order[1]]);
    assert!((top[0]["probability"].as_f64().unwrap() - probs[order[0]]).abs() < 1e-12);
    // Without `logits=true` there are none; the default top-k is 5 (all 4 classes here).
    let v = server.predict("", &a).json();
    assert!(v["predictions"][0].get("logits").is_none());
    assert_eq!(v["predictions"][0]["top"].as_array().unwrap().len(), 4);

    // JPEG, and a multipart body of three images (one gray, one not square): one prediction each, in order,
    // named by their file names.
    let mut jpg = std::io::Cursor::new(Vec::new());
    picture(2, 64, 48)
        .write_to(&mut jpg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpg = jpg.into_inner();
    let r = server.predict("?logits=true", &jpg);
    assert_eq!(
        logits_of(&r.json()["predictions"][0]),
        single_logits(&mut lib, &jpg)
    );
    let gray = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::from_fn(30, 30, |x, y| image::Luma([(x * 7 + y * 3) as u8]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let wide = png(&picture(3, 70, 35));
    let (ct, body) = multipart(&[("a.png", &a), ("gray.png", &gray), ("wide.png", &wide)]);
    let r = server.request(
        "POST",
        "/v1/predict?logits=true",
        &[("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    for (p, (name, bytes)) in
        preds
            .iter()
            .zip([("a.png", &a), ("gray.png", &gray), ("wide.png", &wide)])
    {
        assert_eq!(p["image"], name);
        assert_eq!(logits_of(p), single_logits(&mut lib, bytes), "{name}");
    }

    // The metrics count what was asked.
    server.assert_metrics(&[
        "resnet_http_requests_total{path=\"/v1/predict\",status=\"200\"} 4",
        "resnet_http_requests_total{path=\"/v1/model\",status=\"200\"} 1",
        "resnet_images_total 6",
        "resnet_batch_size_count",
        "resnet_http_request_duration_seconds_bucket",
        "resnet_queue_depth 0",
        "# EOF",
    ]);
}

#[test]
fn concurrent_requests_are_batched_and_answer_as_single_images() {
    let dir = common::scratch_dir("resnet-serve-", "batching");
    let weights = model_file(&dir, Some(32));
    let mut lib = reference(&weights);
    let server = Server::spawn(&weights, 2, &["--max-batch", "16", "--max-wait-ms", "300"]);
    let images: Vec<Vec<u8>> = (0..12).map(|i| png(&picture(20 + i, 36, 36))).collect();
    let want: Vec<Vec<f32>> = images.iter().map(|b| single_logits(&mut lib, b)).collect();
    let addr = server.addr;
    let got: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|b| {
                s.spawn(move || {
                    let r = request(addr, "POST", "/v1/predict?logits=true", &[], b);
                    assert_eq!(r.status, 200);
                    logits_of(&r.json()["predictions"][0])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_same_logits(g, w, &format!("request {i}"));
    }
    let text = String::from_utf8(server.get("/metrics").body).unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in /metrics"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let passes = value("resnet_forward_passes_total");
    assert_eq!(value("resnet_images_total"), 12.0);
    assert!(
        passes < 12.0,
        "12 concurrent requests within a 300 ms window took {passes} forward passes: nothing was batched"
    );
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let dir = common::scratch_dir("resnet-serve-", "bad");
    let weights = model_file(&dir, Some(32));
    let server = Server::spawn(&weights, 2, &["--max-body-mb", "1", "--max-images", "2"]);
    let good = png(&picture(5, 32, 32));
    let truncated = &good[..good.len() / 2];
    let mut huge = Vec::new();
    // A PNG signature and an IHDR chunk claiming 100000 × 100000 pixels, and nothing else.
    huge.extend_from_slice(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    huge.extend_from_slice(&100_000u32.to_be_bytes());
    huge.extend_from_slice(&100_000u32.to_be_bytes());
    huge.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32fast::hash(&huge[12..29]);
    huge.extend_from_slice(&crc.to_be_bytes());
    let (ct3, three) = multipart(&[("a.png", &good), ("b.png", &good), ("c.png", &good)]);
    let (ct0, none) = multipart(&[]);
    let big = vec![7u8; (1 << 20) + 1];

    server
        .predict("", b"hello, not an image")
        .expect_error(400, "cannot read image");
    server
        .predict("", truncated)
        .expect_error(400, "cannot read image");
    server.predict("", b"").expect_error(400, "empty");
    server
        .predict("", &huge)
        .expect_error(400, "body: cannot read image");
    server.predict("", &big).expect_error(413, "");
    server.predict("?topk=0", &good).expect_error(400, "topk");
    server
        .predict("?topk=abc", &good)
        .expect_error(400, "bad query");
    server
        .predict("?colour=blue", &good)
        .expect_error(400, "bad query");
    server
        .request("POST", "/v1/predict", &[("Content-Type", &ct3)], &three)
        .expect_error(413, "more than 2 images");
    server
        .request("POST", "/v1/predict", &[("Content-Type", &ct0)], &none)
        .expect_error(400, "no image");
    server
        .request(
            "POST",
            "/v1/predict",
            &[("Content-Type", "multipart/form-data")],
            &good,
        )
        .expect_error(400, "");
    let r = server.get("/v1/predict");
    r.expect_error(405, "GET is not allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    server
        .request("DELETE", "/v1/model", &[], b"")
        .expect_error(405, "DELETE");
    server
        .get("/v2/predict")
        .expect_error(404, "no route /v2/predict");
    server
        .get("/../../etc/passwd")
        .expect_error(404, "no route");
    // A body shorter than its Content-Length: the client gives up; the server must not.
    {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
            .unwrap();
        drop(s);
    }
    // Garbage instead of HTTP: the connection is closed (hyper answers 400), nothing else.
    {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut buf);
    }

    // Still serving, and every error was counted by kind.
    let r = server.predict("", &good);
    assert_eq!(r.status, 200);
    server.assert_metrics(&[
        "resnet_http_errors_total{kind=\"bad_request\"}",
        "resnet_http_errors_total{kind=\"too_large\"} 2",
        "resnet_http_errors_total{kind=\"not_found\"} 2",
        "resnet_http_errors_total{kind=\"method_not_allowed\"} 2",
        "resnet_http_requests_total{path=\"other\",status=\"404\"} 2",
    ]);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // No resize step, so a 1024 × 1024 upload reaches the network at that size: each forward pass takes a while,
    // one image waits, and the others are refused at once.
    let dir = common::scratch_dir("resnet-serve-", "overload");
    let weights = model_file(&dir, None);
    let server = Server::spawn(
        &weights,
        2,
        &["--max-batch", "1", "--queue", "1", "--max-wait-ms", "0"],
    );
    let big = png(&picture(9, 1024, 1024));
    let addr = server.addr;
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| request(addr, "POST", "/v1/predict", &[], &big)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + refused.len(), 8, "only 200 or 503 answers");
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} answered, {} refused",
        refused.len()
    );
    for r in refused {
        r.expect_error(503, "queue");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // The refusals did not hurt it.
    assert_eq!(server.predict("", &png(&picture(1, 32, 32))).status, 200);
    // A prepared input larger than the limit is refused before it is made.
    server
        .predict("", &png(&picture(1, 1025, 8)))
        .expect_error(413, "at most 1024 pixels a side");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_refuses_new_ones() {
    let dir = common::scratch_dir("resnet-serve-", "shutdown");
    let weights = model_file(&dir, None);
    let mut server = Server::spawn(&weights, 2, &["--max-wait-ms", "0"]);
    let big = png(&picture(4, 1024, 1024));
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || request(addr, "POST", "/v1/predict", &[], &big));
    // Wait until the image is being computed (the queue took it), then ask the server to stop.
    let start = Instant::now();
    loop {
        let text = String::from_utf8(request(addr, "GET", "/metrics", &[], b"").body).unwrap();
        if text.contains("resnet_queue_depth 1") || text.contains("resnet_forward_passes_total 1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the request never queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.terminate();
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let mut rest = String::new();
    server.stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("stopped: requests in flight answered"),
        "{rest}"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "a stopped server still accepts connections"
    );
}

#[test]
fn a_body_that_never_ends_gets_408_and_others_are_served_meanwhile() {
    let dir = common::scratch_dir("resnet-serve-", "timeout");
    let weights = model_file(&dir, Some(32));
    let server = Server::spawn(&weights, 2, &["--timeout", "1"]);
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n\x89PNG",
    )
    .unwrap();
    // While that body hangs, the server answers others.
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.predict("", &png(&picture(3, 32, 32))).status, 200);
    let r = read_reply(slow);
    r.expect_error(408, "took longer than 1 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(30),
        "408 after {waited:?}"
    );
}

fn explain_grid(v: &Value) -> Vec<f32> {
    v["explain"]["grid"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect()
}

#[test]
fn explain_answers_heatmaps_that_match_the_library() {
    use resnet::explain::{Explainer, Target};
    let dir = common::scratch_dir("resnet-serve-", "explain");
    let weights = model_file(&dir, Some(32));
    let server = Server::spawn(&weights, 2, &[]);
    let pic = picture(3, 40, 36);
    let body = png(&pic);
    let mut lib = Explainer::load(&weights, None, None).unwrap();
    let img = resnet::data::Image::new(pic.to_vec(), 36, 40, 3).unwrap();

    // The predicted class at the last stage.
    let r = server.request("POST", "/v1/explain", &[], &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let p = &v["predictions"][0];
    let layer = lib.layer(None).unwrap();
    let want = lib
        .explain(img.clone(), "body", Target::Top1, &layer)
        .unwrap();
    assert_eq!(p["explain"]["layer"], "layer4", "{p}");
    assert_eq!(p["explain"]["index"], want.cam.class, "{p}");
    assert_eq!(p["index"], p["explain"]["index"], "top-1 explained: {p}");
    assert_eq!(explain_grid(p), want.cam.map, "{p}");
    assert_eq!(
        (
            p["explain"]["width"].as_u64(),
            p["explain"]["height"].as_u64()
        ),
        (Some(40), Some(36))
    );
    // The heatmap: a PNG (its signature in base64) of the image's size, as the library draws it.
    let b64 = p["explain"]["png_base64"].as_str().unwrap();
    assert!(
        b64.starts_with("iVBORw0KGgo"),
        "{}",
        &b64[..20.min(b64.len())]
    );
    assert_eq!(
        b64,
        resnet::serve::explain::base64(&want.overlay_png().unwrap())
    );

    // ?class= and ?layer=, a multipart body of two images.
    let (ct, two) = multipart(&[("a.png", &body), ("b.png", &png(&picture(4, 32, 32)))]);
    let r = server.request(
        "POST",
        "/v1/explain?class=dog&layer=layer3&topk=2",
        &[("Content-Type", &ct)],
        &two,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2, "{v}");
    assert_eq!(preds[0]["image"], "a.png");
    let layer3 = lib.layer(Some("layer3")).unwrap();
    let want = lib
        .explain(img, "a.png", Target::Class(1), &layer3)
        .unwrap();
    for p in preds {
        assert_eq!(p["explain"]["class"], "dog", "{p}");
        assert_eq!(p["explain"]["layer"], "layer3", "{p}");
        assert_eq!(p["top"].as_array().unwrap().len(), 2, "{p}");
    }
    assert_eq!(explain_grid(&preds[0]), want.cam.map);
    // Predictions are served as before, and the explain route is counted.
    assert_eq!(server.predict("", &body).status, 200);
    server.assert_metrics(&["resnet_http_requests_total{path=\"/v1/explain\",status=\"200\"} 2"]);
}

#[test]
fn explain_refuses_bad_requests_with_json_and_keeps_serving() {
    let dir = common::scratch_dir("resnet-serve-", "explain-bad");
    let weights = model_file(&dir, Some(32));
    let server = Server::spawn(&weights, 2, &["--max-body-mb", "1", "--max-images", "2"]);
    let good = png(&picture(5, 32, 32));
    let explain = |query: &str, body: &[u8]| {
        server.request("POST", &format!("/v1/explain{query}"), &[], body)
    };
    explain("?class=zebra", &good).expect_error(400, "not a class");
    explain("?class=4", &good).expect_error(400, "not a class");
    explain("?layer=layer9", &good).expect_error(400, "not a layer");
    explain("?layer=layer4.99999999999999999999", &good).expect_error(400, "not a layer");
    explain("?layer=", &good).expect_error(400, "layer must be");
    explain(&format!("?class={}", "a".repeat(300)), &good).expect_error(400, "class must be");
    explain("?colour=blue", &good).expect_error(400, "bad query");
    explain("?topk=0", &good).expect_error(400, "topk");
    explain("", b"hello, not an image").expect_error(400, "cannot read image");
    explain("", &good[..good.len() / 2]).expect_error(400, "cannot read image");
    explain("", b"").expect_error(400, "empty");
    explain("", &vec![7u8; (1 << 20) + 1]).expect_error(413, "");
    let (ct3, three) = multipart(&[("a.png", &good), ("b.png", &good), ("c.png", &good)]);
    server
        .request("POST", "/v1/explain", &[("Content-Type", &ct3)], &three)
        .expect_error(413, "more than 2 images");
    explain("", &png(&picture(1, 1025, 8))).expect_error(413, "at most 1024 pixels a side");
    let r = server.get("/v1/explain");
    r.expect_error(405, "GET is not allowed");
    // Still explaining, and still predicting.
    assert_eq!(explain("", &good).status, 200);
    assert_eq!(server.predict("", &good).status, 200);
}

#[test]
fn a_full_explain_queue_answers_503_and_predictions_go_on() {
    // No resize step: a 1024 × 1024 upload is explained at that size, which takes a while; with one request
    // waiting at most, the others are refused at once, and /v1/predict still answers meanwhile.
    let dir = common::scratch_dir("resnet-serve-", "explain-overload");
    let weights = model_file(&dir, None);
    let server = Server::spawn(&weights, 2, &["--explain-queue", "1"]);
    let big = png(&picture(9, 1024, 1024));
    let small = png(&picture(1, 32, 32));
    let addr = server.addr;
    let (replies, predicted) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| request(addr, "POST", "/v1/explain", &[], &big)))
            .collect();
        let predicted = request(addr, "POST", "/v1/predict", &[], &small).status;
        let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (replies, predicted)
    });
    assert_eq!(predicted, 200);
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + refused.len(), 6, "only 200 or 503 answers");
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} answered, {} refused",
        refused.len()
    );
    for r in refused {
        r.expect_error(503, "explain queue");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        request(addr, "POST", "/v1/explain", &[], &small).status,
        200
    );
}
