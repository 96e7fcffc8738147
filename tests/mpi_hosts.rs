//! Data-parallel training across hosts (feature `mpi`; `.ci/run` runs it as root): two network namespaces joined
//! by veth pairs on a bridge stand for two machines, `mpirun` reaches them through a hostfile and an rsh agent
//! that enters a namespace (and gives it its own host name), with MPI over TCP on the veths only. The run equals
//! the same run on loopback; a host whose link is cut mid-epoch, or a rank frozen with SIGSTOP, ends the job
//! within `--collective-timeout` plus a margin with one line naming it, and the checkpoint resumes with another
//! rank count. Without root or `ip` (namespaces cannot be made) each test says so and passes.
#![cfg(feature = "mpi")]

mod common;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_resnet");
/// What every namespace, link and bridge of these tests is named with, followed by the test process's pid.
const PREFIX: &str = "rwd";
/// The timeout the failure tests run with (seconds), and what the job may take beyond it to end: the
/// watchdog's grace (1 s at this timeout), `MPI_Abort` and mpirun's teardown, on 2 busy cores.
const TIMEOUT: u64 = 10;
const MARGIN: Duration = Duration::from_secs(20);
/// One test at a time: they share the 2 cores and would skew each other's timing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A narrow network on 200 training images at 28×28, in batches of 26 (13 a rank): a few seconds an epoch.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let base = [
        "--threads",
        "1",
        "train",
        "--resize",
        "28",
        "--limit-train",
        "200",
        "--limit-test",
        "100",
        "--batch-size",
        "26",
        "--widths",
        "8,16,16,32",
        "--quiet",
        "--out",
    ];
    base.iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two "hosts": namespaces `<name>n2` and `<name>n3` at 10.213.S.2 and .3, each joined by a veth pair
/// (`<name>h2` on the bridge side) to the bridge `<name>br` at 10.213.S.1 in a third namespace, `<name>n1`,
/// where mpirun runs: every address is inside the test's own namespaces. Removed with every process inside
/// when dropped.
struct Hosts {
    name: String,
    subnet: String,
    dir: PathBuf,
}

impl Hosts {
    /// Makes the hosts for test `tag` (one letter), or says why they cannot be made (`None`: skip).
    fn make(tag: char) -> Option<Hosts> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
                line.split_whitespace().nth(1).map(str::to_string)
            })
            .unwrap_or_default();
        if uid != "0" {
            eprintln!("skipped: network namespaces need root (uid {uid})");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: no `ip` command (iproute2) to make network namespaces");
            return None;
        }
        remove_leftovers();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}{tag}");
        let subnet = format!("10.213.{}", (pid as usize * 7 + tag as usize) % 250 + 1);
        let dir = common::scratch_dir("resnet-mpi-hosts-", &tag.to_string());
        let hosts = Hosts { name, subnet, dir };
        let (launcher, bridge) = (hosts.ns(1), format!("{}br", hosts.name));
        if !run("ip", &["netns", "add", &launcher]).status.success() {
            eprintln!("skipped: cannot make a network namespace");
            return None;
        }
        let bridge_addr = format!("{}.1/24", hosts.subnet);
        for args in [
            &["link", "add", &bridge, "type", "bridge"][..],
            &["addr", "add", &bridge_addr, "dev", &bridge],
            &["link", "set", &bridge, "up"],
            &["link", "set", "lo", "up"],
        ] {
            must(
                "ip",
                &[&["netns", "exec", &launcher, "ip"][..], args].concat(),
            );
        }
        for host in [2, 3] {
            let (ns, outside, inside) = (
                hosts.ns(host),
                hosts.link(host),
                format!("{}v{host}", hosts.name),
            );
            must("ip", &["netns", "add", &ns]);
            must(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", &inside,
                ],
            );
            must("ip", &["link", "set", &inside, "netns", &ns]);
            must("ip", &["link", "set", &outside, "netns", &launcher]);
            for args in [
                &["link", "set", &outside, "master", &bridge][..],
                &["link", "set", &outside, "up"],
            ] {
                must(
                    "ip",
                    &[&["netns", "exec", &launcher, "ip"][..], args].concat(),
                );
            }
            let addr = format!("{}/24", hosts.ip(host));
            for args in [
                &["addr", "add", &addr, "dev", &inside][..],
                &["link", "set", &inside, "up"],
                &["link", "set", "lo", "up"],
            ] {
                must("ip", &[&["netns", "exec", &ns, "ip"][..], args].concat());
            }
        }
        // mpirun's rsh agent, called as `agent HOST COMMAND...`: COMMAND (the daemon) in HOST's namespace, under
        // the namespace's name as host name, so that messages can tell the hosts apart.
        let agent = hosts.dir.join("agent");
        let script = format!(
            "#!/bin/sh\nns={}n${{1##*.}}\nshift\nexec ip netns exec \"$ns\" unshare --uts sh -c \"hostname $ns; $*\"\n",
            hosts.name
        );
        std::fs::write(&agent, script).unwrap();
        must("chmod", &["+x", &agent.display().to_string()]);
        let hostfile = format!("{} slots=1\n{} slots=1\n", hosts.ip(2), hosts.ip(3));
        std::fs::write(hosts.dir.join("hosts"), hostfile).unwrap();
        Some(hosts)
    }

    fn ns(&self, host: u8) -> String {
        format!("{}n{host}", self.name)
    }
    fn link(&self, host: u8) -> String {
        format!("{}h{host}", self.name)
    }
    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet)
    }

    /// `mpirun -np 2` in the launcher's namespace over the two hosts (rank 0 on `n2`, rank 1 on `n3`), MPI and
    /// mpirun's own traffic on the veths. (`ip netns exec` execs mpirun: the child is mpirun itself.)
    fn mpirun(&self, args: &[String]) -> Command {
        let net = format!("{}.0/24", self.subnet);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(1), "mpirun"])
            .args(["--allow-run-as-root", "-np", "2", "--hostfile"])
            .arg(self.dir.join("hosts"))
            .args(["--mca", "plm_rsh_agent"])
            .arg(self.dir.join("agent"))
            .args(["--mca", "plm_rsh_no_tree_spawn", "1"])
            .args(["--mca", "btl", "tcp,self"])
            .args(["--mca", "btl_tcp_if_include", &net])
            .args(["--mca", "oob_tcp_if_include", &net])
            // mpirun notices a daemon it cannot reach only through TCP keepalive, and only while nothing is
            // queued for that daemon: detection (3 + 3 × 1 s) well within the collective timeout, as
            // docs/mpi.md advises.
            .args(["--mca", "oob_tcp_keepalive_time", "3"])
            .args(["--mca", "oob_tcp_keepalive_intvl", "1"])
            .args(["--mca", "oob_tcp_keepalive_probes", "3"])
            .arg(BIN)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RESNET_DATA")
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Removes the namespaces (killing what runs in them) and links named `name…`.
fn remove(name: &str) {
    let list = run("ip", &["netns", "list"]);
    for ns in String::from_utf8_lossy(&list.stdout).lines() {
        let ns = ns.split_whitespace().next().unwrap_or("");
        if !ns.starts_with(name) {
            continue;
        }
        let pids = run("ip", &["netns", "pids", ns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
        let _ = run("ip", &["netns", "delete", ns]);
    }
    let links = run("ip", &["-o", "link", "show"]);
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        // "7: rwd123ah2@if6: <…": the name, without the peer after '@'.
        let Some(link) = line.split(": ").nth(1) else {
            continue;
        };
        let link = link.split('@').next().unwrap_or("");
        if link.starts_with(name) {
            let _ = run("ip", &["link", "delete", link]);
        }
    }
}

/// Removes what an earlier test process that was killed left behind: names with this prefix whose pid is gone.
fn remove_leftovers() {
    let mut names = String::from_utf8_lossy(&run("ip", &["netns", "list"]).stdout).into_owned();
    names += &String::from_utf8_lossy(&run("ip", &["-o", "link", "show"]).stdout);
    for word in names.split(|c: char| !c.is_ascii_alphanumeric()) {
        let Some(rest) = word.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            remove(&format!("{PREFIX}{pid}"));
        }
    }
}

fn expect_success(out: &Output, what: &str) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout.into_owned()
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn two_hosts_train_what_two_ranks_on_loopback_train() {
    let _one = lock();
    let Some(hosts) = Hosts::make('a') else {
        return;
    };
    let (far, near) = (hosts.dir.join("hosts-run"), hosts.dir.join("loopback-run"));
    let stdout = expect_success(
        &hosts
            .mpirun(&train_args(&far, &["--epochs", "1"]))
            .output()
            .unwrap(),
        "two hosts",
    );
    for (rank, host) in [(0, 2), (1, 3)] {
        let line = format!("rank {rank} of 2 on {} ", hosts.ns(host));
        assert!(stdout.contains(&line), "no `{line}`:\n{stdout}");
    }
    let loopback = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", BIN])
        .args(train_args(&near, &["--epochs", "1"]))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    expect_success(&loopback, "loopback");
    let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        read(&far) == read(&near),
        "the model trained across hosts differs from loopback's"
    );
}

/// Starts a long run across the hosts with the short timeout, and waits for its first epoch (a checkpoint on
/// disk). Returns the job, its stdout lines to come, and rank 1's pid.
fn start_long_run(hosts: &Hosts, out: &Path) -> (Child, Receiver<String>, u32) {
    let timeout = TIMEOUT.to_string();
    let args = train_args(out, &["--epochs", "1000", "--collective-timeout", &timeout]);
    let (mut child, rx) =
        common::spawn_with_lines(&mut hosts.mpirun(&args), "mpirun (OpenMPI's openmpi-bin)");
    let (pid, epochs) = common::rank1_pid_and_epochs(&rx, Duration::from_secs(120));
    if pid.is_none() || epochs == 0 {
        let _ = child.kill();
        panic!("no epoch across the hosts within 120 s (rank 1's pid: {pid:?})");
    }
    (child, rx, pid.unwrap())
}

/// Waits for the job to end after the fault at `since`; returns how long it took and its stderr. Fails if it
/// outlives the timeout plus the margin (then it is killed, and the namespaces' removal ends the rest).
fn ended_after(mut child: Child, since: Instant, what: &str) -> (Duration, String) {
    let bound = Duration::from_secs(TIMEOUT) + MARGIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > bound {
            let _ = child.kill();
            panic!("the job still ran {bound:?} after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = since.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !status.success(),
        "the job succeeded after {what}:\n{stderr}"
    );
    eprintln!("{what}: the job ended {took:.1?} later");
    (took, stderr)
}

/// The run in `dir` continues from its checkpoint by one epoch with `launch` (another rank count).
fn resumes(dir: &Path, mut launch: Command, what: &str) {
    let epochs_done = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(epochs_done >= 1, "no epoch logged before the fault");
    let target = (epochs_done + 1).to_string();
    let out = launch
        .args([
            "--threads",
            "1",
            "train",
            "--quiet",
            "--epochs",
            &target,
            "--resume",
        ])
        .arg(dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RESNET_DATA")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = expect_success(&out, what);
    let resumed = format!(
        "resuming {} after epoch {epochs_done} of {target}",
        dir.display()
    );
    assert!(
        stdout.contains(&resumed),
        "{what}: no `{resumed}`:\n{stdout}"
    );
}

/// The one line of the watchdog, naming rank 1 on the second host.
fn names_rank_1(stderr: &str, hosts: &Hosts) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("went silent"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let silent = format!("rank 1 on {} went silent", hosts.ns(3));
    assert!(
        lines[0].starts_with(&format!("error: rank 0 on {}: ", hosts.ns(2)))
            && lines[0].contains(&silent),
        "{}",
        lines[0]
    );
}

#[test]
fn a_host_cut_off_mid_epoch_ends_the_job_within_the_timeout_and_the_checkpoint_resumes() {
    let _one = lock();
    let Some(hosts) = Hosts::make('b') else {
        return;
    };
    let dir = hosts.dir.join("run");
    let (child, _stdout, _) = start_long_run(&hosts, &dir);
    // Mid-epoch: the first epoch's line came with its checkpoint; the next epoch is under way.
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    must(
        "ip",
        &[
            "netns",
            "exec",
            &hosts.ns(1),
            "ip",
            "link",
            "set",
            &hosts.link(3),
            "down",
        ],
    );
    let (_, stderr) = ended_after(child, cut, "cutting the second host's link");
    // mpirun's keepalive ends the job before the collective timeout: its banner names the host it lost.
    assert!(
        stderr.contains("lost communication with a remote daemon")
            && stderr.contains(&format!("on node {}", hosts.ip(3))),
        "{stderr}"
    );
    resumes(&dir, Command::new(BIN), "one process resuming");
}

#[test]
fn a_frozen_rank_ends_the_job_within_the_timeout_and_the_checkpoint_resumes() {
    let _one = lock();
    let Some(hosts) = Hosts::make('c') else {
        return;
    };
    let dir = hosts.dir.join("run");
    let (child, _stdout, pid) = start_long_run(&hosts, &dir);
    std::thread::sleep(Duration::from_millis(500));
    let frozen = Instant::now();
    must("kill", &["-STOP", &pid.to_string()]);
    let (_, stderr) = ended_after(child, frozen, "freezing rank 1 (SIGSTOP)");
    names_rank_1(&stderr, &hosts);
    let mut three = Command::new("mpirun");
    three.args(["--allow-run-as-root", "--oversubscribe", "-np", "3", BIN]);
    resumes(&dir, three, "three ranks resuming");
}
