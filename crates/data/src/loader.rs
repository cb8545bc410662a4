//! The data loader: seeded epoch permutations, batches that wrap across epochs, parallel
//! decoding, one background thread that prefetches batches in order, exact resume from a
//! [`DataCursor`].
//!
//! Threads: a producer thread walks the order and assembles batches; with `workers ≥ 2` it
//! hands examples to a pool of `workers` decode threads and puts their results back in order
//! (with `workers = 1` it decodes them itself). Finished batches wait in a channel of
//! [`PREFETCH`] slots. Tensors are made on the caller's thread. Batches do not depend on the
//! number of workers: results are reassembled by position.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::rng::{Stream, below, keyed_rng};
use super::transform::hflip_in_place;
use super::{BadFilePolicy, DataError, Dataset, Example};

/// Finished batches the producer may hold ahead of the consumer.
pub const PREFETCH: usize = 2;

/// A position in the data order: the next example is position `index` of epoch `epoch`'s
/// permutation. Saved with checkpoints; `seek` to it resumes exactly.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataCursor {
    /// Epoch number, from 0.
    pub epoch: u64,
    /// Position within the epoch's permutation, `0..len`.
    pub index: usize,
}

impl DataCursor {
    /// The same position with `index < len` (an index past the end carries into the epoch).
    pub fn normalised(self, len: usize) -> Self {
        if len == 0 {
            return self;
        }
        Self {
            epoch: self.epoch + (self.index / len) as u64,
            index: self.index % len,
        }
    }

    /// The position after this one in a dataset of `len` examples.
    pub fn advanced(self, len: usize) -> Self {
        if self.index + 1 >= len {
            Self {
                epoch: self.epoch + 1,
                index: 0,
            }
        } else {
            Self {
                epoch: self.epoch,
                index: self.index + 1,
            }
        }
    }
}

/// One batch, as CPU tensors.
#[derive(Debug)]
pub struct Batch {
    /// The examples, `[B, ...shape]` f32 (images in [−1, 1]).
    pub x: Tensor,
    /// Class indices `[B]` int64, when the dataset has classes.
    pub class_labels: Option<Tensor>,
    /// Multi-hot label vectors `[B, D]` f32, when the dataset has them.
    pub label_vector: Option<Tensor>,
    /// Paired conditioning images `[B, C, H, W]` f32, when the dataset has them.
    pub cond_image: Option<Tensor>,
}

impl Batch {
    /// A copy sharing storage.
    pub fn shallow_clone(&self) -> Self {
        let c = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
        Self {
            x: self.x.shallow_clone(),
            class_labels: c(&self.class_labels),
            label_vector: c(&self.label_vector),
            cond_image: c(&self.cond_image),
        }
    }
}

/// The order of epoch `epoch`: a permutation of `0..len` from `ChaCha8Rng` keyed by
/// `(seed, epoch)` (Fisher–Yates from the last element down, unbiased bounded draws).
pub fn epoch_permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = keyed_rng(Stream::Permutation, seed, epoch, 0);
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Whether dataset example `index` is mirrored when met in epoch `epoch` (probability ½).
pub fn flip_decision(seed: u64, epoch: u64, index: usize) -> bool {
    use rand::Rng;
    keyed_rng(Stream::Flip, seed, epoch, index as u64).next_u64() >> 63 == 1
}

/// A batch assembled by the producer, before tensors.
struct Assembled {
    x: Vec<f32>,
    classes: Option<Vec<i64>>,
    labels: Option<Vec<f32>>,
    cond: Option<Vec<f32>>,
    indices: Vec<usize>,
    next: DataCursor,
    skipped: Vec<(usize, DataError)>,
}

/// What every example of the dataset must look like.
#[derive(Clone)]
struct Layout {
    numel: usize,
    classes: bool,
    label_dim: Option<usize>,
    cond_numel: Option<usize>,
    flip_width: Option<usize>,
}

impl Layout {
    fn of(dataset: &dyn Dataset) -> Self {
        let numel = |s: &[i64]| s.iter().product::<i64>() as usize;
        let shape = dataset.shape();
        Self {
            numel: numel(&shape),
            classes: dataset.num_classes().is_some(),
            label_dim: dataset.label_dim().map(|d| d as usize),
            cond_numel: dataset.cond_shape().map(|s| numel(&s)),
            flip_width: (dataset.hflip() && shape.len() == 3).then(|| shape[2] as usize),
        }
    }

    fn check(&self, index: usize, e: &Example) -> Result<(), DataError> {
        let bad = |what: String| {
            Err(DataError::Loader(format!(
                "example {index}: {what} does not match the dataset's declared shape"
            )))
        };
        if e.data.len() != self.numel {
            return bad(format!("{} data values", e.data.len()));
        }
        if e.class.is_some() != self.classes {
            return bad("class presence".into());
        }
        if e.labels.as_ref().map(Vec::len) != self.label_dim {
            return bad("label vector length".into());
        }
        if e.cond.as_ref().map(Vec::len) != self.cond_numel {
            return bad("cond image size".into());
        }
        Ok(())
    }
}

type Job = (usize, usize);
type JobResult = (usize, Result<Example, DataError>);

/// Load one example, turning a panic into an error.
fn load(dataset: &dyn Dataset, index: usize) -> Result<Example, DataError> {
    catch_unwind(AssertUnwindSafe(|| dataset.get(index))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(DataError::Loader(format!(
            "panic while loading example {index}: {message}"
        )))
    })
}

/// The decode threads of one producer.
struct Pool {
    jobs: Option<Sender<Job>>,
    results: Receiver<JobResult>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(dataset: &Arc<dyn Dataset>, workers: usize, stop: &Arc<AtomicBool>) -> Self {
        let (job_tx, job_rx) = channel::<Job>();
        let (res_tx, res_rx) = channel::<JobResult>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let threads = (0..workers)
            .map(|w| {
                let (dataset, job_rx, res_tx, stop) = (
                    dataset.clone(),
                    job_rx.clone(),
                    res_tx.clone(),
                    stop.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("difflab-decode-{w}"))
                    .spawn(move || {
                        loop {
                            let job = job_rx.lock().map(|rx| rx.recv());
                            let Ok(Ok((slot, index))) = job else { return };
                            let result = if stop.load(Ordering::Relaxed) {
                                Err(DataError::Loader("stopped".into()))
                            } else {
                                load(dataset.as_ref(), index)
                            };
                            if res_tx.send((slot, result)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawn a decode thread")
            })
            .collect();
        Self {
            jobs: Some(job_tx),
            results: res_rx,
            threads,
        }
    }

    /// Load `indices` in parallel; results in the same order.
    fn load_all(&self, indices: &[usize]) -> Vec<Result<Example, DataError>> {
        let jobs = self.jobs.as_ref().expect("pool is running");
        for (slot, &index) in indices.iter().enumerate() {
            jobs.send((slot, index)).expect("decode threads are alive");
        }
        let mut out: Vec<Option<Result<Example, DataError>>> =
            (0..indices.len()).map(|_| None).collect();
        for _ in 0..indices.len() {
            let (slot, result) = self.results.recv().expect("decode threads are alive");
            out[slot] = Some(result);
        }
        out.into_iter()
            .map(|r| r.expect("every slot filled"))
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None; // closes the job channel: idle threads return
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The producer's state: where it is and how it loads.
struct Producer {
    dataset: Arc<dyn Dataset>,
    layout: Layout,
    batch_size: usize,
    seed: u64,
    policy: BadFilePolicy,
    pool: Option<Pool>,
    stop: Arc<AtomicBool>,
    perm: (u64, Vec<usize>),
}

impl Producer {
    fn index_at(&mut self, at: DataCursor) -> usize {
        if self.perm.0 != at.epoch || self.perm.1.is_empty() {
            self.perm = (
                at.epoch,
                epoch_permutation(self.dataset.len(), self.seed, at.epoch),
            );
        }
        self.perm.1[at.index]
    }

    fn load_all(&self, indices: &[usize]) -> Vec<Result<Example, DataError>> {
        match &self.pool {
            Some(pool) if indices.len() > 1 => pool.load_all(indices),
            _ => indices
                .iter()
                .map(|&i| load(self.dataset.as_ref(), i))
                .collect(),
        }
    }

    /// The batch starting at `cursor`: the next `batch_size` examples that load, in order.
    fn batch(&mut self, mut cursor: DataCursor) -> Result<Assembled, DataError> {
        let len = self.dataset.len();
        let bs = self.batch_size;
        let l = self.layout.clone();
        let mut out = Assembled {
            x: Vec::with_capacity(bs * l.numel),
            classes: l.classes.then(|| Vec::with_capacity(bs)),
            labels: l.label_dim.map(|d| Vec::with_capacity(bs * d)),
            cond: l.cond_numel.map(|n| Vec::with_capacity(bs * n)),
            indices: Vec::with_capacity(bs),
            next: cursor,
            skipped: Vec::new(),
        };
        let mut bad_in_a_row = 0usize;
        while out.indices.len() < bs {
            if self.stop.load(Ordering::Relaxed) {
                return Err(DataError::Loader("stopped".into()));
            }
            let mut positions = Vec::with_capacity(bs - out.indices.len());
            for _ in out.indices.len()..bs {
                positions.push((cursor.epoch, self.index_at(cursor)));
                cursor = cursor.advanced(len);
            }
            let indices: Vec<usize> = positions.iter().map(|p| p.1).collect();
            for ((epoch, index), result) in positions.into_iter().zip(self.load_all(&indices)) {
                let mut e = match result {
                    Ok(e) => e,
                    Err(e) if e.is_bad_file() && self.policy == BadFilePolicy::Skip => {
                        bad_in_a_row += 1;
                        if bad_in_a_row >= len.max(1) {
                            return Err(DataError::NoGoodExamples {
                                skipped: bad_in_a_row,
                                last: Box::new(e),
                            });
                        }
                        out.skipped.push((index, e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                bad_in_a_row = 0;
                l.check(index, &e)?;
                if let Some(width) = l.flip_width
                    && flip_decision(self.seed, epoch, index)
                {
                    hflip_in_place(&mut e.data, width);
                    if let Some(c) = e.cond.as_mut() {
                        hflip_in_place(c, width);
                    }
                }
                out.x.extend_from_slice(&e.data);
                if let (Some(v), Some(c)) = (out.classes.as_mut(), e.class) {
                    v.push(c);
                }
                if let (Some(v), Some(lv)) = (out.labels.as_mut(), e.labels) {
                    v.extend_from_slice(&lv);
                }
                if let (Some(v), Some(c)) = (out.cond.as_mut(), e.cond) {
                    v.extend_from_slice(&c);
                }
                out.indices.push(index);
            }
        }
        out.next = cursor;
        Ok(out)
    }

    /// Produce batches from `cursor` until told to stop, the consumer goes away, or an error
    /// (which is sent, then the thread ends).
    fn run(mut self, mut cursor: DataCursor, tx: SyncSender<Result<Assembled, DataError>>) {
        loop {
            let result = self.batch(cursor);
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let failed = match &result {
                Ok(b) => {
                    cursor = b.next;
                    false
                }
                Err(_) => true,
            };
            if tx.send(result).is_err() || failed {
                return;
            }
        }
    }
}

/// A running producer thread.
struct Running {
    rx: Receiver<Result<Assembled, DataError>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stop the thread and wait for it; returns its panic message if it panicked.
    fn shut_down(mut self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.rx); // unblocks a producer waiting to send
        let thread = self.thread.take()?;
        thread.join().err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        })
    }
}

/// Batches from a dataset in a seeded, resumable order (see the `data` module docs).
///
/// Epoch `e` visits [`epoch_permutation`]`(len, seed, e)`. Every batch holds exactly
/// `batch_size` examples: the last batch of an epoch is completed from the start of the next
/// epoch (so a batch may span two epochs, and with `batch_size > len` hold an example twice).
/// With [`BadFilePolicy::Skip`], an example whose file cannot be read or decoded is logged once
/// (with its path) and replaced by the next position in the order; with `Fail`, `next_batch`
/// returns the error, naming the path, and leaves the cursor at the start of that batch.
pub struct DataLoader {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    seed: u64,
    workers: usize,
    policy: BadFilePolicy,
    cursor: DataCursor,
    running: Option<Running>,
    bad: HashSet<usize>,
    last_indices: Vec<usize>,
}

impl DataLoader {
    /// A loader at epoch 0, position 0. `workers` is the number of decode threads (0 counts as
    /// 1). Starts no thread until the first `next_batch`.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        seed: u64,
        workers: usize,
        policy: BadFilePolicy,
    ) -> Self {
        assert!(batch_size > 0, "batch_size must be at least 1");
        Self {
            dataset,
            batch_size,
            seed,
            workers: workers.max(1),
            policy,
            cursor: DataCursor::default(),
            running: None,
            bad: HashSet::new(),
            last_indices: Vec::new(),
        }
    }

    /// The position of the next example `next_batch` will return.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Continue from `cursor` (e.g. one saved with a checkpoint): the following batches are
    /// exactly those a loader that had reached `cursor` would return. Stops the prefetching
    /// thread (waiting for at most the example each decode thread is on).
    pub fn seek(&mut self, cursor: DataCursor) {
        self.stop();
        self.cursor = cursor.normalised(self.dataset.len());
    }

    /// The next batch (blocks until it is ready; the following one is being prepared).
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        if self.dataset.is_empty() {
            return Err(DataError::Config("the dataset has no examples".into()));
        }
        if self.running.is_none() {
            self.start();
        }
        let received = self.running.as_ref().expect("started").rx.recv();
        let assembled = match received {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.stop();
                return Err(e);
            }
            Err(_) => {
                let panic = self.running.take().and_then(Running::shut_down);
                return Err(DataError::Loader(
                    panic.unwrap_or_else(|| "producer thread ended".into()),
                ));
            }
        };
        for (index, error) in assembled.skipped {
            if self.bad.insert(index) {
                eprintln!("warning: skipping example {index}: {error}");
            }
        }
        self.cursor = assembled.next;
        self.last_indices = assembled.indices;
        Ok(self.tensors(
            assembled.x,
            assembled.classes,
            assembled.labels,
            assembled.cond,
        ))
    }

    /// Number of distinct bad files met (and skipped) so far.
    pub fn skipped(&self) -> usize {
        self.bad.len()
    }

    /// The dataset indices of the examples in the last batch returned, in batch order.
    pub fn last_indices(&self) -> &[usize] {
        &self.last_indices
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Examples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn tensors(
        &self,
        x: Vec<f32>,
        classes: Option<Vec<i64>>,
        labels: Option<Vec<f32>>,
        cond: Option<Vec<f32>>,
    ) -> Batch {
        let b = self.batch_size as i64;
        let with_batch = |shape: Vec<i64>| [vec![b], shape].concat();
        Batch {
            x: Tensor::from_slice(&x).reshape(with_batch(self.dataset.shape())),
            class_labels: classes.map(|c| Tensor::from_slice(&c)),
            label_vector: labels.map(|l| Tensor::from_slice(&l).reshape([b, -1])),
            cond_image: cond.and_then(|c| {
                let shape = self.dataset.cond_shape()?;
                Some(Tensor::from_slice(&c).reshape(with_batch(shape)))
            }),
        }
    }

    fn start(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let producer = Producer {
            layout: Layout::of(self.dataset.as_ref()),
            dataset: self.dataset.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
            policy: self.policy,
            pool: None,
            stop: stop.clone(),
            perm: (0, Vec::new()),
        };
        let (tx, rx) = sync_channel(PREFETCH);
        let (workers, cursor) = (self.workers, self.cursor);
        let thread = std::thread::Builder::new()
            .name("difflab-data".into())
            .spawn(move || {
                let mut producer = producer;
                if workers > 1 {
                    producer.pool = Some(Pool::new(&producer.dataset, workers, &producer.stop));
                }
                producer.run(cursor, tx)
            })
            .expect("spawn the data loader thread");
        self.running = Some(Running {
            rx,
            stop,
            thread: Some(thread),
        });
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shut_down();
        }
    }
}

impl Drop for DataLoader {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("dataset", &self.dataset.describe())
            .field("batch_size", &self.batch_size)
            .field("seed", &self.seed)
            .field("workers", &self.workers)
            .field("policy", &self.policy)
            .field("cursor", &self.cursor)
            .field("skipped", &self.bad.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_differ_by_epoch() {
        let a = epoch_permutation(100, 5, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_permutation(100, 5, 0));
        assert_ne!(a, epoch_permutation(100, 5, 1));
        assert_ne!(a, epoch_permutation(100, 6, 0));
        assert!(epoch_permutation(0, 1, 1).is_empty());
        assert_eq!(epoch_permutation(1, 1, 1), [0]);
    }

    #[test]
    fn cursor_arithmetic() {
        let c = DataCursor { epoch: 2, index: 9 };
        assert_eq!(c.advanced(10), DataCursor { epoch: 3, index: 0 });
        assert_eq!(
            DataCursor {
                epoch: 0,
                index: 25
            }
            .normalised(10),
            DataCursor { epoch: 2, index: 5 }
        );
    }

    #[test]
    fn flips_are_about_half() {
        let n = (0..1000).filter(|&i| flip_decision(3, 1, i)).count();
        assert!((400..600).contains(&n), "{n}");
    }
}
