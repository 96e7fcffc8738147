//! A run's part in a data-parallel job (`mpirun -np N resnet train`, see [`crate::dist`]): the step with its
//! gradient allreduce (one flat buffer after the backward pass, or buckets during it), the batch-norm running
//! statistics averaged before evaluation, the sharded evaluation summed, and the weights compared by digest at
//! the start and after every epoch. A single process is the one rank of a [`crate::dist::Local`] job: with no
//! other rank to sum with or compare to, each of these is the single process's own step, or nothing.

use super::run::single_step;
use super::{Data, DistStats, Evaluation, Step, TrainConfig};
use crate::data::{Batch, Loader};
use crate::dist::{agree, check_same, digest64, Collective};
use crate::nn::{Buffers, LayerMut, ResNet, StateTensor};
use crate::optim::Optimizer;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// Values after the gradients in the flat buffer: the rank's weighted loss, its correct count, and a failure flag.
const EXTRAS: usize = 3;

/// The communicator and the per-step buffers of a rank.
pub struct Distributed {
    /// The job's collectives.
    pub comm: Arc<dyn Collective>,
    /// Gradients of every trainable tensor, then [`EXTRAS`]; summed over ranks each step.
    flat: Vec<f32>,
    /// Values in each bucket, from the buffer's end (empty: one allreduce of the whole buffer).
    bucket_plan: Vec<usize>,
    compute_secs: f64,
    allreduce_secs: f64,
    steps: usize,
}

impl Distributed {
    /// A rank's state for `comm` ([`crate::dist::Local`] for a single process).
    pub fn new(comm: Arc<dyn Collective>) -> Distributed {
        Distributed {
            comm,
            flat: Vec::new(),
            bucket_plan: Vec::new(),
            compute_secs: 0.0,
            allreduce_secs: 0.0,
            steps: 0,
        }
    }

    /// Whether this rank writes the run directory and prints progress (rank 0).
    pub fn leads(&self) -> bool {
        self.comm.rank() == 0
    }

    /// Whether the job has other ranks than this one.
    fn shared(&self) -> bool {
        self.comm.size() > 1
    }

    /// [`agree`] on this job.
    pub fn agree<T>(&self, local: Result<T>) -> Result<T> {
        agree(&*self.comm, local)
    }

    /// With `sync_bn`, makes `net`'s batch norms normalize with the statistics of the job's global batch. A
    /// single process's batch is the global one already.
    pub fn attach_sync_bn(&self, net: &mut ResNet, sync_bn: bool) {
        if sync_bn && self.shared() {
            net.set_sync_bn(Some(self.comm.clone()));
        }
    }

    /// One data-parallel step: this rank's share `batch` (or the error reading it) of a global batch of
    /// `global_n` images. Forward, the loss gradient weighted by `n / global_n`, backward, and the sum over ranks
    /// of the gradients together with the weighted loss, the correct count and a failure flag: one allreduce of
    /// the flat buffer after the backward pass, or with buckets ([`Distributed::set_buckets`]) one allreduce a
    /// bucket, started while the backward pass goes on. Every rank then takes the same decision and, unless
    /// something diverged, the same optimizer step. Returns the global batch's mean loss and correct count. A
    /// rank's failure fails every rank with its message.
    ///
    /// A single process has nothing to sum: its step is `single_step`, the gradients left in the layers (no
    /// copy into the flat buffer, no weighting by a share of 1).
    pub fn step(
        &mut self,
        net: &mut ResNet,
        opt: &mut dyn Optimizer,
        batch: Result<Batch>,
        global_n: usize,
        lr: f32,
        label_smoothing: f32,
    ) -> Result<Step> {
        if !self.shared() {
            return single_step(net, opt, &batch?, lr, label_smoothing);
        }
        let start = Instant::now();
        let local = batch.and_then(|b| {
            net.forward(&b.images, b.shape, Buffers::Own)?;
            let (loss, correct) = net.loss_smoothed(&b.labels, label_smoothing)?;
            let weight = b.labels.len() as f32 / global_n as f32;
            net.scale_loss_grad(weight);
            Ok((b, loss * weight, correct))
        });
        let params = self.params(net);
        self.flat[params..].copy_from_slice(&match &local {
            Ok((_, loss, correct)) => [*loss, *correct as f32, 0.0],
            Err(_) => [0.0, 0.0, 1.0],
        });
        let images = local.as_ref().ok().map(|(b, _, _)| b.images.as_slice());
        let (reduce, reduced) = match self.bucket_plan.is_empty() {
            true => self.reduce_flat(net, images, params),
            false => self.reduce_buckets(net, images, params),
        };
        let (grads, extras) = self.flat.split_at(params);
        if extras[2] != 0.0 {
            // Some rank failed: every rank agrees on the lowest failing rank's error.
            self.agree(local)?;
            return Err(Error::new("a rank failed without an error message"));
        }
        let (loss, correct) = (extras[0], extras[1] as usize);
        let outcome = if !loss.is_finite() {
            Step::Diverged(format!("loss is {loss}"))
        } else if let Some(i) = grads.iter().position(|g| !g.is_finite()) {
            let name = net.param_name_at(i).unwrap_or_default();
            Step::Diverged(format!("gradient of `{name}` is not finite"))
        } else {
            opt.step_net_with(net, lr, grads);
            Step::Done { loss, correct }
        };
        self.steps += 1;
        self.allreduce_secs += (reduced - reduce).as_secs_f64();
        self.compute_secs += (reduce - start).as_secs_f64() + reduced.elapsed().as_secs_f64();
        Ok(outcome)
    }

    /// Backward (unless this rank failed: `images` `None`), the gradients into the flat buffer, one allreduce.
    /// Returns when the allreduce started and ended.
    fn reduce_flat(
        &mut self,
        net: &mut ResNet,
        images: Option<&[f32]>,
        params: usize,
    ) -> (Instant, Instant) {
        match images {
            Some(x) => {
                net.backward(x, false, None);
                net.copy_grads(&mut self.flat[..params]);
            }
            None => self.flat[..params].fill(0.0),
        }
        let reduce = Instant::now();
        self.comm.sum_f32(&mut self.flat);
        (reduce, Instant::now())
    }

    /// Backward with the buckets of [`Distributed::set_buckets`]: as each part of the network reports its final
    /// gradients (classifier first, stem last, so the flat buffer fills from its end), they are copied in; each
    /// full bucket goes to a communication thread that sums it over the ranks while the backward pass goes on.
    /// A rank that failed sends zeros in the same buckets, so every rank makes the same calls. Returns when the
    /// backward pass ended and when the last bucket's sum did: the communication the backward did not hide.
    fn reduce_buckets(
        &mut self,
        net: &mut ResNet,
        images: Option<&[f32]>,
        params: usize,
    ) -> (Instant, Instant) {
        let naming = net.config.naming;
        let comm = &*self.comm;
        let plan = &self.bucket_plan;
        let flat = &mut self.flat[..];
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<&mut [f32]>();
            let worker = scope.spawn(move || {
                for bucket in rx {
                    comm.sum_f32(bucket);
                }
            });
            let mut out = Buckets {
                rest: flat,
                filled: EXTRAS,
                plan: plan.iter(),
                want: 0,
                tx,
            };
            out.want = *out.plan.next().expect("a bucket plan is never empty");
            match images {
                Some(x) => net.backward(
                    x,
                    false,
                    Some(&mut |part| {
                        let mut len = 0;
                        part.visit(naming, &mut |g| len += g.len());
                        let mut at = out.rest.len() - out.filled - len;
                        part.visit(naming, &mut |g| {
                            out.rest[at..at + g.len()].copy_from_slice(g);
                            at += g.len();
                        });
                        out.filled += len;
                        out.send_if_full();
                    }),
                ),
                None => {
                    out.rest[..params].fill(0.0);
                    while !out.rest.is_empty() {
                        out.filled = out.want;
                        out.send_if_full();
                    }
                }
            }
            let Buckets { rest, tx, .. } = out;
            assert!(rest.is_empty(), "the bucket plan covers every gradient");
            let done = Instant::now();
            drop(tx);
            worker.join().expect("the communication thread ends");
            (done, Instant::now())
        })
    }

    /// Sums gradients in buckets of about `mb` MiB started during the backward pass (`None`: one allreduce of
    /// the whole flat buffer after it). The buckets follow the parts [`ResNet::backward`] reports, each
    /// closed once it holds `mb` MiB or more. Not with `--sync-bn`, whose batch norms sum over the ranks inside
    /// the backward pass: the two would contend for the one communicator. A single process sums nothing and
    /// ignores them.
    pub fn set_buckets(&mut self, net: &mut ResNet, mb: Option<f64>, sync_bn: bool) -> Result<()> {
        self.bucket_plan.clear();
        if !self.shared() {
            return Ok(());
        }
        // Ranks that bucket differently would make different calls: compare the flag like the configuration.
        check_same(
            &*self.comm,
            "--bucket-mb",
            "launch every rank with the same flags",
            format!("{mb:?}").as_bytes(),
        )?;
        let Some(mb) = mb else {
            return Ok(());
        };
        if sync_bn {
            return self.agree(Err(Error::new(
                "--bucket-mb and --sync-bn do not go together (batch norm sums over the ranks during the backward pass); drop one",
            )));
        }
        if !(mb.is_finite() && mb > 0.0) {
            return self.agree(Err(Error::new(format!(
                "--bucket-mb must be a positive number of MiB, got {mb}"
            ))));
        }
        let limit = ((mb * (1 << 20) as f64) as usize / std::mem::size_of::<f32>()).max(1);
        let mut size = EXTRAS;
        for part in net.grad_parts() {
            size += part;
            if size >= limit {
                self.bucket_plan.push(size);
                size = 0;
            }
        }
        if size > 0 {
            self.bucket_plan.push(size);
        }
        Ok(())
    }

    /// Trainable values of `net`, with the flat buffer sized for them (allocates only the first time).
    fn params(&mut self, net: &mut ResNet) -> usize {
        let params = self.flat.len().saturating_sub(EXTRAS);
        if self.flat.is_empty() {
            let n = net.param_lens().iter().sum::<usize>();
            self.flat = vec![0.0; n + EXTRAS];
            return n;
        }
        params
    }

    /// The epoch's communication figures so far, then starts counting afresh (`None` for a single process,
    /// which communicates nothing).
    pub fn take_stats(&mut self) -> Option<DistStats> {
        if !self.shared() {
            return None;
        }
        let steps = self.steps.max(1) as f64;
        let stats = DistStats {
            ranks: self.comm.size(),
            steps: self.steps,
            compute_sec_per_step: self.compute_secs / steps,
            allreduce_sec_per_step: self.allreduce_secs / steps,
            allreduce_bytes_per_step: self.flat.len() * std::mem::size_of::<f32>(),
            allreduces_per_step: self.bucket_plan.len().max(1),
        };
        (self.compute_secs, self.allreduce_secs, self.steps) = (0.0, 0.0, 0);
        Some(stats)
    }

    /// Refuses a split in which some rank's share of a training batch has fewer than two images (batch norm
    /// needs two): `batch` images a batch, `len` training images, over the job's ranks. A single process's
    /// batches are whole.
    pub fn check_shares(&self, batch: usize, len: usize) -> Result<()> {
        if !self.shared() {
            return Ok(());
        }
        let ranks = self.comm.size();
        let last = match len % batch {
            0 => batch.min(len),
            r => r,
        };
        let smallest = batch.min(last) / ranks;
        let local = if smallest < 2 {
            Err(Error::new(format!(
                "--batch-size {batch} over {ranks} ranks {} the last rank {smallest} image(s) of a {}-image batch, \
                 and batch norm needs at least 2 per rank; use a larger batch, fewer ranks or a --limit-train that leaves a larger last batch",
                if smallest == 0 { "gives" } else { "leaves" },
                batch.min(last)
            )))
        } else {
            Ok(())
        };
        self.agree(local)
    }

    /// Has every rank read its first shares of `train` (at `epoch`) and `test`, so that data a rank cannot read
    /// fails the job before training. A single process meets unreadable data where it reads it.
    pub fn read_first_shares(&self, train: &Loader, test: &Loader, epoch: usize) -> Result<()> {
        if !self.shared() {
            return Ok(());
        }
        self.agree(
            train
                .batch(epoch, 0)
                .and_then(|_| test.batch(0, 0))
                .map(|_| ()),
        )
    }

    /// Replaces each batch norm's running mean and variance by their mean over the ranks. Without `--sync-bn`
    /// each rank's statistics follow its own shares; the running averages are linear in the batch statistics,
    /// so averaging them once before evaluation equals updating them every step with the ranks' mean batch
    /// statistics. With `--sync-bn` they are already equal and this changes nothing but rounding, so it is
    /// skipped; so it is for a single process.
    pub fn average_running_stats(&self, net: &mut ResNet, sync_bn: bool) {
        if sync_bn || !self.shared() {
            return;
        }
        let mut buf = Vec::new();
        net.for_each_layer_mut(&mut |_, layer| {
            if let LayerMut::Bn(b) = layer {
                buf.extend_from_slice(&b.running_mean);
                buf.extend_from_slice(&b.running_var);
            }
        });
        self.comm.sum_f32(&mut buf);
        let ranks = self.comm.size() as f32;
        let mut at = 0;
        net.for_each_layer_mut(&mut |_, layer| {
            if let LayerMut::Bn(b) = layer {
                for v in b.running_mean.iter_mut().chain(b.running_var.iter_mut()) {
                    *v = buf[at] / ranks;
                    at += 1;
                }
            }
        });
    }

    /// Sums the ranks' evaluations of their shares of the test set into the whole set's (a single process's
    /// share is the whole set).
    pub fn sum_evaluation(&self, ev: Evaluation) -> Evaluation {
        if !self.shared() {
            return ev;
        }
        let k = ev.confusion.len();
        let mut counts: Vec<f64> = ev.confusion.iter().flatten().map(|&c| c as f64).collect();
        self.comm.sum_f64(&mut counts);
        let confusion: Vec<Vec<usize>> = counts
            .chunks_exact(k.max(1))
            .map(|row| row.iter().map(|&c| c as usize).collect())
            .collect();
        let count: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
        Evaluation {
            accuracy: correct as f64 / count.max(1) as f64,
            confusion,
            count,
        }
    }

    /// Stops every rank unless all hold bit-identical weights, batch-norm statistics and counters (`when`:
    /// `at the start`, `after epoch 3`). A single process has no other weights to compare.
    pub fn check_weights(&self, net: &ResNet, when: &str) -> Result<()> {
        if !self.shared() {
            return Ok(());
        }
        let mut hasher = Sha256::new();
        let mut bytes = Vec::new();
        for (key, t) in net.state_dict() {
            hasher.update(key.as_bytes());
            bytes.clear();
            match t {
                StateTensor::F32 { data, .. } => {
                    bytes.extend(data.iter().flat_map(|v| v.to_bits().to_le_bytes()))
                }
                StateTensor::I64 { data, .. } => {
                    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()))
                }
            }
            hasher.update(&bytes);
        }
        check_same(
            &*self.comm,
            &format!("the weights {when}"),
            "the ranks diverged (a rank with a different build or CPU features?)",
            &hasher.finalize(),
        )
    }
}

/// The flat buffer being handed out in buckets during a backward pass: `rest` is the part not yet sent, its
/// last `filled` values belong to the bucket being filled, which is sent once it holds `want`.
struct Buckets<'a, 'p> {
    rest: &'a mut [f32],
    filled: usize,
    plan: std::slice::Iter<'p, usize>,
    want: usize,
    tx: std::sync::mpsc::Sender<&'a mut [f32]>,
}

impl Buckets<'_, '_> {
    fn send_if_full(&mut self) {
        if self.filled == self.want {
            let at = self.rest.len() - self.filled;
            let (front, bucket) = std::mem::take(&mut self.rest).split_at_mut(at);
            self.tx.send(bucket).expect("the communication thread runs");
            self.rest = front;
            self.filled = 0;
            self.want = self.plan.next().copied().unwrap_or(0);
        }
    }
}

/// What every rank must share before training: the run's configuration and the data's identity (sizes,
/// classes, channels, image size and every label). Compared by [`check_same`].
pub fn run_identity(config: &TrainConfig, data: &Data) -> Vec<u8> {
    let mut id = serde_json::to_vec(config).expect("a configuration serializes");
    for split in [&data.train, &data.test] {
        let labels: Vec<u8> = (0..split.len())
            .flat_map(|i| (split.label(i) as u32).to_le_bytes())
            .collect();
        let summary = format!(
            "|{} images, {} channels, size {:?}, classes {:?}, labels {:016x}",
            split.len(),
            split.channels(),
            split.image_size(),
            split.classes(),
            digest64(&labels)
        );
        id.extend_from_slice(summary.as_bytes());
    }
    id
}

/// Checks on every rank that the configuration and data match rank 0's ([`run_identity`]).
pub fn check_identity(comm: &dyn Collective, config: &TrainConfig, data: &Data) -> Result<()> {
    check_same(
        comm,
        "the training configuration or data",
        "launch every rank with the same flags and the same data",
        &run_identity(config, data),
    )
}
