//! Decoding and preprocessing ahead of the model, on worker threads, into a bounded queue.
//!
//! [`BatchStream`] reads a [`Dataset`]'s encoded images on one thread (sequential I/O),
//! decodes and preprocesses them ([`ClipPreprocess`]) on `workers` threads, and hands out
//! batches of `[n, 3, h, w]` pixels in dataset order. At most `queue` images are in flight
//! between the stages, so memory stays bounded by the queue and the batch, never by the
//! dataset. Dropping the stream stops the threads.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use fast_image_resize::Resizer;

use crate::dataset::{Dataset, Encoded};
use crate::error::{DataError, Result};
use crate::preprocess::{AlphaRule, ClipPreprocess, decode_rgb_with};

/// A batch of preprocessed images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[n, 3, height, width]` floats, channels first.
    pub pixels: Vec<f32>,
    /// The class of each image.
    pub labels: Vec<u32>,
    /// Number of images.
    pub len: usize,
}

/// How a [`BatchStream`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Images per batch.
    pub batch: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Images in flight between the stages (bounds memory).
    pub queue: usize,
}

impl StreamOptions {
    /// `batch` images per batch, one decoding thread per available core (at least 1), and
    /// a queue of four batches.
    #[must_use]
    pub fn new(batch: usize) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            batch: batch.max(1),
            workers,
            queue: 4 * batch.max(1),
        }
    }
}

type Decoded = (usize, Result<(Vec<f32>, u32)>);

/// Preprocessed batches of a dataset, produced ahead on worker threads (see the module
/// documentation). An iterator of `Result<Batch>`; after an error it ends.
pub struct BatchStream {
    results: Receiver<Decoded>,
    pending: BTreeMap<usize, Result<(Vec<f32>, u32)>>,
    next: usize,
    total: usize,
    batch: usize,
    pixels_per_image: usize,
    failed: bool,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchStream")
            .field("next", &self.next)
            .field("total", &self.total)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl BatchStream {
    /// Starts the reader and the workers; images with transparency are composited onto
    /// white as transformers' `CLIPImageProcessor` does ([`AlphaRule::White`]).
    #[must_use]
    pub fn new(dataset: &Dataset, preprocess: &ClipPreprocess, options: StreamOptions) -> Self {
        Self::with_alpha(dataset, preprocess, options, AlphaRule::White)
    }

    /// As [`new`](Self::new), converting images with transparency to RGB by `alpha`
    /// ([`AlphaRule::Drop`] is PIL's plain `convert("RGB")`, what FusionBench's dataset
    /// wrapper applies before the processor).
    #[must_use]
    pub fn with_alpha(
        dataset: &Dataset,
        preprocess: &ClipPreprocess,
        options: StreamOptions,
        alpha: AlphaRule,
    ) -> Self {
        let (h, w) = preprocess.output_size(0, 0);
        let queue = options.queue.max(1);
        let (work_tx, work_rx) = sync_channel::<(usize, Result<Encoded>)>(queue);
        let (done_tx, done_rx) = sync_channel::<Decoded>(queue);
        let mut threads = Vec::new();
        let encoded = dataset.encoded();
        threads.push(std::thread::spawn(move || read_all(encoded, &work_tx)));
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..options.workers.max(1) {
            let rx = Arc::clone(&work_rx);
            let tx = done_tx.clone();
            let pre = preprocess.clone();
            threads.push(std::thread::spawn(move || {
                decode_all(&rx, &tx, &pre, alpha)
            }));
        }
        Self {
            results: done_rx,
            pending: BTreeMap::new(),
            next: 0,
            total: dataset.len(),
            batch: options.batch.max(1),
            pixels_per_image: 3 * h * w,
            failed: false,
            threads,
        }
    }

    /// The next image in order.
    fn next_image(&mut self) -> Option<Result<(Vec<f32>, u32)>> {
        loop {
            if let Some(item) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some(item);
            }
            match self.results.recv() {
                Ok((seq, item)) => {
                    self.pending.insert(seq, item);
                }
                Err(_) => {
                    return (self.next < self.total).then(|| {
                        Err(DataError::Image {
                            file: "<stream>".to_owned(),
                            message: format!(
                                "the decoding threads stopped after {} of {} images",
                                self.next, self.total
                            ),
                        })
                    });
                }
            }
        }
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.total {
            return None;
        }
        let n = self.batch.min(self.total - self.next);
        let mut pixels = Vec::with_capacity(n * self.pixels_per_image);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            match self.next_image() {
                Some(Ok((px, label))) => {
                    pixels.extend_from_slice(&px);
                    labels.push(label);
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => break,
            }
        }
        let len = labels.len();
        (len > 0).then_some(Ok(Batch {
            pixels,
            labels,
            len,
        }))
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the result queue makes the workers' sends fail, and their exit closes the
        // work queue, which stops the reader.
        let (_, closed) = sync_channel(0);
        self.results = closed;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn read_all(
    encoded: Box<dyn Iterator<Item = Result<Encoded>> + Send>,
    tx: &SyncSender<(usize, Result<Encoded>)>,
) {
    for (seq, item) in encoded.enumerate() {
        let stop = item.is_err();
        if tx.send((seq, item)).is_err() || stop {
            return;
        }
    }
}

fn decode_all(
    rx: &Mutex<Receiver<(usize, Result<Encoded>)>>,
    tx: &SyncSender<Decoded>,
    pre: &ClipPreprocess,
    alpha: AlphaRule,
) {
    let mut resizer = Resizer::new();
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((seq, item)) = job else {
            return;
        };
        let out = item.and_then(|e| {
            let img = decode_rgb_with(&e.bytes, &e.name, alpha)?;
            Ok((pre.apply(&img, &e.name, &mut resizer)?, e.label))
        });
        if tx.send((seq, out)).is_err() {
            return;
        }
    }
}
