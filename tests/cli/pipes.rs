//! Standard output that goes away, as with `resnet summary | head -c 1`. Every command that writes to stdout
//! ends quietly: status 0 (or death by SIGPIPE, as a shell tool's), no panic, nothing on stderr. `serve` keeps
//! answering with its status lines dropped, and a full disk behind `>` is one `error:` line. See src/out.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use resnet::data::{Dataset, Split};

use crate::{bundled, data_dir, expect_failure, model, s, scratch, Out, BIN};

/// How the reader of the command's stdout goes away.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// Its read end is closed before the command starts, so the command's first write fails.
    Closed,
    /// It reads one byte, then closes the pipe. A later write fails, if the command has not yet written
    /// everything into the pipe's buffer (a single line, as `--json` prints, always has been).
    OneByte,
}

/// The binary with stdout to a pipe that `reader` abandons, stderr to a file, no backtraces. It is killed after
/// two minutes.
fn run_abandoned(args: &[&str], cwd: &Path, reader: Reader) -> Out {
    let io = scratch("pipe-io");
    let err = io.join("stderr");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    let child = match reader {
        Reader::Closed => {
            let (read_end, write_end) = std::io::pipe().unwrap();
            drop(read_end);
            cmd.stdout(write_end);
            let child = cmd.spawn().expect("start the resnet binary");
            // `cmd` holds the parent's copy of the write end: gone with it.
            drop(cmd);
            child
        }
        Reader::OneByte => {
            cmd.stdout(Stdio::piped());
            let mut child = cmd.spawn().expect("start the resnet binary");
            let mut stdout = child.stdout.take().unwrap();
            let mut byte = [0u8; 1];
            let n = stdout.read(&mut byte).unwrap();
            assert_eq!(n, 1, "resnet {args:?} printed nothing");
            drop(stdout);
            child
        }
    };
    let status = wait_at_most(child, Duration::from_secs(120), args, &err);
    let out = Out {
        status,
        stdout: String::new(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    let _ = std::fs::remove_dir_all(&io);
    out
}

fn wait_at_most(mut child: Child, limit: Duration, args: &[&str], err: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "resnet {args:?} still running after {limit:?}\nstderr:\n{}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status 0, or killed by SIGPIPE, as `seq 100000 | head -n 1` leaves `seq`.
fn quiet_status(status: ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(13) {
            return true;
        }
    }
    status.success()
}

#[test]
fn every_command_ends_quietly_when_its_reader_goes() {
    let m = model();
    let cwd = scratch("pipes");
    let test = Dataset::load(&bundled(), Split::Test, false).unwrap();
    let mut images = Vec::new();
    for i in 0..4 {
        let p = cwd.join(format!("{i}.png"));
        image::GrayImage::from_raw(28, 28, test.image(i).to_vec())
            .unwrap()
            .save(&p)
            .unwrap();
        images.push(p);
    }
    let images: Vec<&str> = images.iter().map(|p| s(p)).collect();
    let data = data_dir(&cwd, "data", &Vec::new());
    let w = s(&m.weights);

    let predict: Vec<&str> = ["predict", "--weights", w]
        .into_iter()
        .chain(images.iter().copied())
        .collect();
    let predict_json: Vec<&str> = predict.iter().copied().chain(["--json"]).collect();
    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["summary"],
        vec![
            "summary",
            "--arch",
            "resnet18",
            "--input",
            "1x3x64x64",
            "--plan",
        ],
        predict,
        predict_json,
        vec![
            "eval",
            "--weights",
            w,
            "--limit",
            "64",
            "--batch-size",
            "16",
        ],
        vec![
            "bench", "--json", "--only", "infer28", "--iters", "1", "--warmup", "0", "--batch", "2",
        ],
        vec![
            "train",
            "--data",
            s(&data),
            "--resize",
            "28",
            "--widths",
            "8,8,8,8",
            "--batch-size",
            "5",
            "--epochs",
            "2",
            "--quiet",
        ],
    ];
    for reader in [Reader::Closed, Reader::OneByte] {
        for (i, args) in commands.iter().enumerate() {
            let out_dir = cwd.join(format!("run-{reader:?}-{i}"));
            let mut args = args.clone();
            if args[0] == "train" {
                args.extend(["--out", s(&out_dir)]);
            }
            let out = run_abandoned(&args, &cwd, reader);
            let what = format!("resnet {} (reader {reader:?})", args.join(" "));
            assert!(
                quiet_status(out.status),
                "{what}: {:?}\nstderr:\n{}",
                out.status,
                out.stderr
            );
            assert!(
                !out.stderr.contains("panicked"),
                "{what}: panicked\n{}",
                out.stderr
            );
            assert_eq!(out.stderr, "", "{what}: wrote to stderr");
        }
    }
    let _ = std::fs::remove_dir_all(&cwd);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_behind_stdout_is_one_error_line() {
    let cwd = scratch("pipes-full");
    let err = cwd.join("stderr");
    let args = ["summary", "--input", "1x1x32x32"];
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let out = Out {
        status: wait_at_most(child, Duration::from_secs(120), &args, &err),
        stdout: String::new(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    let msg = expect_failure(&out, "summary > /dev/full");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        msg.contains("error: standard output: No space left on device"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}

/// `GET /healthz` on a new connection: the whole answer, or an error if nothing listens yet.
fn healthz(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A server whose log reader died keeps answering, and stops cleanly on SIGTERM.
#[test]
fn serve_keeps_serving_with_its_stdout_closed() {
    let m = model();
    let cwd = scratch("pipes-serve");
    let err = cwd.join("stderr");
    // A free port: stdout, where the server says which port it took, is closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (read_end, write_end) = std::io::pipe().unwrap();
    drop(read_end);
    let mut child = Command::new(BIN)
        .args([
            "--threads",
            "2",
            "serve",
            "--addr",
            &addr.to_string(),
            "--weights",
            s(&m.weights),
        ])
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(write_end)
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start resnet serve");
    let start = Instant::now();
    let answer = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "resnet serve exited ({status:?}) with its stdout closed\nstderr:\n{}",
                std::fs::read_to_string(&err).unwrap()
            );
        }
        match healthz(addr) {
            Ok(answer) => break answer,
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                let _ = child.kill();
                panic!("no answer on {addr} after 60 s: {e}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    // SIGTERM (the shell's builtin `kill`); its "stopped: …" line is dropped as well.
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM");
    let status = wait_at_most(child, Duration::from_secs(60), &["serve"], &err);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{status:?}\nstderr:\n{stderr}");
    assert_eq!(stderr, "", "serve wrote to stderr");
    let _ = std::fs::remove_dir_all(&cwd);
}
