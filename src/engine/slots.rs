//! A worker's running batch in buffers that are allocated once and never rebuilt.
//!
//! Every per-request tensor of `step.onnx` (the features input, each membrane state, the logits) is a
//! buffer of `max_batch` rows. The active requests occupy rows `0..n`, in the order of the worker's
//! `active` list. A request that leaves is replaced by the last row (one row copied per state, not
//! the whole batch); a newcomer is written into row `n` (its encoder output and the states' initial
//! value). Each membrane state has two buffers: a step reads one and ONNX Runtime writes its output
//! straight into the other (ping-pong), then the two swap roles, so a step neither allocates a
//! membrane-sized buffer nor copies one.
//!
//! ONNX Runtime sees views of the first `n` rows: `OrtValue`s over the buffers, made once per batch
//! size and side and then reused, and passed to `Run` both as inputs and as preallocated outputs.
//! The buffers, the views and the runs are [`ort_core`]'s (the one module here with raw pointers);
//! this module is the bookkeeping: which request sits in which row, moving rows, writing inputs,
//! reading logits.
//!
//! Where the features and membranes live is [`SlotMemory`]: in host memory the worker owns (the
//! default on the CPU), or in buffers ONNX Runtime allocates on the step graph's device (the
//! default under `--device cuda`): then the membranes never leave the GPU between steps, a leaving
//! request's row is moved by a device-to-device copy, and only the logits (which the exit rule
//! reads on the host) and newcomers' inputs cross the bus. `--slot-memory device` on the CPU runs
//! that same path with ONNX Runtime's CPU allocator and copies, which is how it is tested without
//! a GPU.

#![deny(unsafe_code)]

mod copier;
#[allow(unsafe_code)]
pub mod ort_core;

use std::rc::Rc;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

use crate::error::Error;
use crate::runtime::Device;
use copier::Copier;
use ort_core::{BufId, CoreError, DeviceAlloc, Dst, HostId, IoNames, Pool, Rows, Src};

impl From<CoreError> for Error {
    /// What failed, with ONNX Runtime's error as the cause when there is one.
    fn from(e: CoreError) -> Error {
        let what = e.to_string();
        match e.into_cause() {
            Some(cause) => Error::internal_from(what, cause),
            None => Error::internal(what),
        }
    }
}

/// Where a worker's features and membranes live (`--slot-memory`, resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotMemory {
    /// Buffers the worker owns in host memory, read and written in place by ONNX Runtime.
    Host,
    /// Buffers ONNX Runtime allocates on `Device` for the step graph; rows move by ONNX Runtime
    /// copies on that device.
    Device(Device),
}

/// `--slot-memory` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SlotMemoryChoice {
    /// On the device under `--device cuda`, in host memory on the CPU.
    #[default]
    Auto,
    Host,
    Device,
}

impl SlotMemoryChoice {
    pub fn resolve(self, device: &Device) -> SlotMemory {
        match (self, device) {
            (SlotMemoryChoice::Host, _) | (SlotMemoryChoice::Auto, Device::Cpu) => SlotMemory::Host,
            (SlotMemoryChoice::Device, _) | (SlotMemoryChoice::Auto, Device::Cuda(_)) => {
                SlotMemory::Device(device.clone())
            }
        }
    }
}

/// What device slots need: ONNX Runtime's allocator for the device, and the device itself (for
/// the slots' [`Copier`] graphs).
pub struct DeviceSlots {
    alloc: Rc<DeviceAlloc>,
    device: Device,
}

impl DeviceSlots {
    /// For `memory` next to `step` (the step graph's session, whose allocator for the device the
    /// buffers come from; the allocator keeps that session alive). `None` for host memory.
    pub fn new(step: &Session, memory: &SlotMemory) -> Result<Option<DeviceSlots>, Error> {
        let (device, id, on) = match memory {
            SlotMemory::Host => return Ok(None),
            SlotMemory::Device(d @ Device::Cpu) => (AllocationDevice::CPU, 0, d),
            SlotMemory::Device(d @ Device::Cuda(id)) => (AllocationDevice::CUDA, *id, d),
        };
        let info = MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| Error::internal_from("slot memory info", e))?;
        let alloc = DeviceAlloc::new(step, info).map_err(|e| {
            Error::internal_from(
                format!(
                    "cannot allocate the slots on the step graph's device ({})",
                    on.provider_name()
                ),
                e,
            )
        })?;
        Ok(Some(DeviceSlots {
            alloc: Rc::new(alloc),
            device: on.clone(),
        }))
    }
}

fn copier(cp: &mut Option<Copier>) -> Result<&mut Copier, Error> {
    cp.as_mut()
        .ok_or_else(|| Error::internal("device slots without their copy session"))
}

/// Writes `src` (whole rows, host memory) into `buf` from row `first`: in place in host memory, or
/// with one copy to the device.
fn write_rows(
    pool: &mut Pool,
    cp: &mut Option<Copier>,
    buf: BufId,
    first: usize,
    src: &[f32],
) -> Result<(), Error> {
    let row_len = pool.row_len(buf);
    if let Some(b) = pool.host_of_mut(buf) {
        b[first * row_len..first * row_len + src.len()].copy_from_slice(src);
        return Ok(());
    }
    let rows = src.len() / row_len.max(1);
    copier(cp)?.copy(
        pool,
        Src::host(src, row_len),
        buf.rows(first, rows).flat().into(),
    )
}

/// `rows` rows of `buf` from row `first`, copied to the host.
fn read_rows(
    pool: &mut Pool,
    cp: &mut Option<Copier>,
    buf: BufId,
    first: usize,
    rows: usize,
) -> Result<Vec<f32>, Error> {
    let row_len = pool.row_len(buf);
    if let Some(b) = pool.host_of(buf) {
        return Ok(b[first * row_len..(first + rows) * row_len].to_vec());
    }
    let mut out = vec![0f32; rows * row_len];
    copier(cp)?.copy(
        pool,
        buf.rows(first, rows).flat().into(),
        Dst::host(&mut out, row_len),
    )?;
    Ok(out)
}

/// One row's input and output of `exit.onnx` in buffers allocated once, with their views: the
/// learned rule scores each row in a run of its own (see the engine's `learned_scores`), and those
/// runs allocate nothing.
pub struct ExitRow {
    pool: Pool,
    aggregate: HostId,
    timestep: HostId,
    output: HostId,
    names: IoNames,
}

impl ExitRow {
    /// `classes` values of the running sum in; `names` are the aggregate and timestep inputs and the
    /// output, as the manifest names them.
    pub fn new(classes: usize, names: [&str; 3]) -> Result<ExitRow, Error> {
        let [aggregate, timestep, output] = names;
        let mut pool = Pool::new();
        let mut row = ExitRow {
            aggregate: pool.add_host(1, &[classes]),
            timestep: pool.add_host(1, &[1]),
            output: pool.add_host(1, &[1]),
            names: IoNames::new(&[aggregate, timestep], &[output])?,
            pool,
        };
        let (ins, outs) = (
            [row.aggregate.rows(0, 1), row.timestep.rows(0, 1)],
            [row.output.rows(0, 1)],
        );
        row.pool.cache(0, &ins, &outs)?;
        Ok(row)
    }

    /// The stop probability of one row: its running sum cast to float32, and its t.
    pub fn score(&mut self, session: &mut Session, sum: &[f64], t: usize) -> Result<f32, Error> {
        let agg = self.pool.host_mut(self.aggregate);
        if sum.len() != agg.len() {
            return Err(Error::internal(format!(
                "exit.onnx: {} classes for an aggregate of {}",
                sum.len(),
                agg.len()
            )));
        }
        for (d, s) in agg.iter_mut().zip(sum) {
            *d = *s as f32;
        }
        self.pool.host_mut(self.timestep)[0] = t as f32;
        self.pool.run_cached(0, session, &self.names, "exit.onnx")?;
        Ok(self.pool.host(self.output)[0])
    }
}

/// What `Slots` needs to know about the graphs.
pub struct SlotSpec<'a> {
    pub max_batch: usize,
    /// Per-request input of the encoder (the image), shape without the batch.
    pub input_dims: &'a [usize],
    /// Per-request input of `step.onnx` (the encoder's output, or the image without an encoder).
    pub feature_dims: &'a [usize],
    pub classes: usize,
    /// Each membrane state: (shape without the batch, initial value).
    pub states: Vec<(&'a [usize], f32)>,
    pub step_inputs: Vec<&'a str>,
    pub step_outputs: Vec<&'a str>,
    /// Encoder input and output names, when the model has an encoder.
    pub encoder: Option<(&'a str, &'a str)>,
    /// Features and membranes on a device ([`DeviceSlots::new`]); `None`: host memory.
    pub device: Option<DeviceSlots>,
}

struct State {
    len: usize,
    initial: f32,
    /// `bufs[side]` is read by the step when `side == cur`, written when not.
    bufs: [BufId; 2],
}

pub struct Slots {
    cap: usize,
    n: usize,
    input_len: usize,
    feature_len: usize,
    classes: usize,
    /// Every buffer below, and the step's views: `2 * (n - 1) + cur`, made on first use.
    pool: Pool,
    /// Newcomers' (or, under `encoder-every-step`, every active request's) images for the encoder.
    images: HostId,
    features: BufId,
    /// Always on the host: the exit rule reads every row's logits after each step.
    logits: HostId,
    states: Vec<State>,
    /// Which side of each state's pair holds the current membranes.
    cur: usize,
    step_names: IoNames,
    encoder_names: Option<IoNames>,
    /// Rows copied by `swap_remove` (for tests and the benchmark notes).
    pub rows_moved: u64,
    /// A device copy that failed outside a fallible call (`swap_remove`): the next `step` reports
    /// it, and the engine then fails the batch and clears it.
    broken: Option<Error>,
    /// Host scratch for newcomers' features (without an encoder) and the states' initial values,
    /// written to the device in one copy each.
    initial: Vec<f32>,
    /// Copies to, on and from the device, with device slots.
    copier: Option<Copier>,
}

impl Slots {
    pub fn new(spec: SlotSpec<'_>) -> Result<Slots, Error> {
        let cap = spec.max_batch.max(1);
        let (dev, copier) = match spec.device {
            Some(d) => (
                Some(d.alloc),
                Some(Copier::new(&d.device, 1 + spec.states.len())?),
            ),
            None => (None, None),
        };
        let dev = dev.as_ref();
        let mut pool = Pool::new();
        let states = spec
            .states
            .iter()
            .map(|(dims, initial)| {
                Ok(State {
                    len: dims.iter().product::<usize>(),
                    initial: *initial,
                    bufs: [pool.add(cap, dims, dev)?, pool.add(cap, dims, dev)?],
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let encoder_names = match spec.encoder {
            Some((i, o)) => Some(IoNames::new(&[i], &[o])?),
            None => None,
        };
        Ok(Slots {
            cap,
            n: 0,
            input_len: spec.input_dims.iter().product::<usize>(),
            feature_len: spec.feature_dims.iter().product::<usize>(),
            classes: spec.classes,
            images: pool.add_host(cap, spec.input_dims),
            features: pool.add(cap, spec.feature_dims, dev)?,
            logits: pool.add_host(cap, &[spec.classes]),
            pool,
            states,
            cur: 0,
            step_names: IoNames::new(&spec.step_inputs, &spec.step_outputs)?,
            encoder_names,
            rows_moved: 0,
            broken: None,
            initial: Vec::new(),
            copier,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Forgets every row (after a failed step); the buffers stay.
    pub fn clear(&mut self) {
        self.n = 0;
        self.broken = None;
    }

    /// Adds `images.len()` newcomers at rows `n..`: their features (the encoder run once over all
    /// of them, or the images themselves without an encoder, or nothing when `encode` is false) and
    /// the states' initial values. On error no row is added.
    pub fn admit(
        &mut self,
        images: &[&[f32]],
        encoder: Option<&mut Session>,
        encode: bool,
    ) -> Result<(), Error> {
        let m = images.len();
        let first = self.n;
        if first + m > self.cap {
            return Err(Error::internal(format!(
                "{m} newcomers do not fit in {} free rows",
                self.cap - first
            )));
        }
        if let Some(x) = images.iter().find(|x| x.len() != self.input_len) {
            return Err(Error::internal(format!(
                "input of {} values, the model takes {}",
                x.len(),
                self.input_len
            )));
        }
        if encoder.is_some() {
            let (il, dst) = (self.input_len, self.pool.host_mut(self.images));
            for (i, x) in images.iter().enumerate() {
                dst[i * il..(i + 1) * il].copy_from_slice(x);
            }
        } else if let Some(dst) = self.pool.host_of_mut(self.features) {
            let fl = self.feature_len;
            for (i, x) in images.iter().enumerate() {
                dst[(first + i) * fl..(first + i + 1) * fl].copy_from_slice(x);
            }
        } else {
            // The newcomers' rows are contiguous: one copy to the device for all of them.
            self.initial.clear();
            for x in images {
                self.initial.extend_from_slice(x);
            }
            let buf = self.features;
            write_rows(&mut self.pool, &mut self.copier, buf, first, &self.initial)?;
        }
        if let (Some(session), true) = (encoder, encode) {
            self.encode_rows(session, first, m)?;
        }
        for st in &self.states {
            let buf = st.bufs[self.cur];
            if let Some(b) = self.pool.host_of_mut(buf) {
                b[first * st.len..(first + m) * st.len].fill(st.initial);
            } else {
                self.initial.clear();
                self.initial.resize(m * st.len, st.initial);
                write_rows(&mut self.pool, &mut self.copier, buf, first, &self.initial)?;
            }
        }
        self.n += m;
        Ok(())
    }

    /// Overwrites the features of rows `first..` with `rows` (whole rows of the step graph's input,
    /// back to back, host memory), in host memory or with one copy to the device: how a per_step
    /// model gets each row's next frame before a step. Only active rows can be written.
    pub fn write_features(&mut self, first: usize, rows: &[f32]) -> Result<(), Error> {
        let fl = self.feature_len;
        if fl == 0 || !rows.len().is_multiple_of(fl) {
            return Err(Error::internal(format!(
                "{} feature values are not whole rows of {fl}",
                rows.len()
            )));
        }
        let m = rows.len() / fl;
        if first + m > self.n {
            return Err(Error::internal(format!(
                "feature rows {first}..{} written, {} rows are active",
                first + m,
                self.n
            )));
        }
        if m == 0 {
            return Ok(());
        }
        write_rows(&mut self.pool, &mut self.copier, self.features, first, rows)
    }

    /// Runs the encoder over `images` rows `0..m` into feature rows `first..first + m`.
    fn encode_rows(&mut self, session: &mut Session, first: usize, m: usize) -> Result<(), Error> {
        let Some(names) = &self.encoder_names else {
            return Err(Error::internal("the model has no encoder graph"));
        };
        let (src, dst) = (self.images.rows(0, m), self.features.rows(first, m));
        self.pool
            .bind([src.into()], [dst.into()])?
            .run(session, names, "encoder.onnx")?;
        Ok(())
    }

    /// Re-encodes every active row from `images` (the `encoder-every-step` ablation).
    pub fn encode_all(&mut self, images: &[&[f32]], session: &mut Session) -> Result<(), Error> {
        let n = images.len().min(self.n);
        let (il, dst) = (self.input_len, self.pool.host_mut(self.images));
        for (i, x) in images.iter().take(n).enumerate() {
            dst[i * il..(i + 1) * il].copy_from_slice(x);
        }
        self.encode_rows(session, 0, n)
    }

    /// Removes row `i`: the last row moves into it (one row per tensor), as `Vec::swap_remove`.
    pub fn swap_remove(&mut self, i: usize) {
        if i >= self.n {
            return;
        }
        let last = self.n - 1;
        if i != last {
            let moved = if self.on_device() {
                self.move_device_row(last, i)
            } else {
                self.move_host_row(last, i)
            };
            if let Err(e) = moved {
                self.broken.get_or_insert(e);
            }
            self.rows_moved += 1;
        }
        self.n = last;
    }

    /// The features and every current state: the tensors a row of which is one request's.
    fn row_tensors(&self) -> impl Iterator<Item = BufId> + '_ {
        std::iter::once(self.features).chain(self.states.iter().map(|st| st.bufs[self.cur]))
    }

    /// Copies row `from` of the features and of every current state onto row `to`, in host memory.
    fn move_host_row(&mut self, from: usize, to: usize) -> Result<(), Error> {
        let bufs: Vec<BufId> = self.row_tensors().collect();
        for buf in bufs {
            let len = self.pool.row_len(buf);
            let Some(b) = self.pool.host_of_mut(buf) else {
                return Err(Error::internal("a device buffer among host slots"));
            };
            b.copy_within(from * len..(from + 1) * len, to * len);
        }
        Ok(())
    }

    /// Copies row `from` of the features and of every current state onto row `to`, on the device,
    /// in one run of the copy graph.
    fn move_device_row(&mut self, from: usize, to: usize) -> Result<(), Error> {
        let mut src = Vec::with_capacity(1 + self.states.len());
        let mut dst = Vec::with_capacity(1 + self.states.len());
        for buf in self.row_tensors() {
            if !self.pool.on_device(buf) {
                return Err(Error::internal("a host buffer among device slots"));
            }
            src.push(buf.rows(from, 1).flat());
            dst.push(buf.rows(to, 1).flat());
        }
        copier(&mut self.copier)?.copy_rows(&mut self.pool, &src, &dst)
    }

    /// One `step.onnx` run over rows `0..n`: features and the current membranes in, the logits and
    /// the next membranes out (into the other side of each pair), then the sides swap.
    pub fn step(&mut self, session: &mut Session) -> Result<(), Error> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        let n = self.n;
        if n == 0 {
            return Ok(());
        }
        let key = 2 * (n - 1) + self.cur;
        if !self.pool.is_cached(key) {
            let cur = self.cur;
            let mut ins: Vec<Rows> = vec![self.features.rows(0, n)];
            let mut outs: Vec<Rows> = vec![self.logits.rows(0, n)];
            for st in &self.states {
                ins.push(st.bufs[cur].rows(0, n));
                outs.push(st.bufs[cur ^ 1].rows(0, n));
            }
            self.pool.cache(key, &ins, &outs)?;
        }
        self.pool
            .run_cached(key, session, &self.step_names, "step.onnx")?;
        self.cur ^= 1;
        Ok(())
    }

    /// Row `i`'s logits of the last step.
    pub fn logits(&self, i: usize) -> &[f32] {
        let k = self.classes;
        &self.pool.host(self.logits)[i * k..(i + 1) * k]
    }

    /// Row `i`'s current membranes of state `s`, copied to the host (tests).
    pub fn membrane(&mut self, s: usize, i: usize) -> Result<Vec<f32>, Error> {
        let buf = self.states[s].bufs[self.cur];
        read_rows(&mut self.pool, &mut self.copier, buf, i, 1)
    }

    /// Row `i`'s features, copied to the host (tests).
    pub fn features(&mut self, i: usize) -> Result<Vec<f32>, Error> {
        read_rows(&mut self.pool, &mut self.copier, self.features, i, 1)
    }

    /// Whether features and membranes live in device buffers.
    pub fn on_device(&self) -> bool {
        self.pool.on_device(self.features)
    }

    /// The `copy-membranes` ablation: what rebuilding the batch after every step costs, i.e. every
    /// active row of every state copied into a freshly allocated buffer and back.
    pub fn copy_membranes(&mut self) -> Result<(), Error> {
        let n = self.n;
        if n == 0 {
            return Ok(());
        }
        for st in &self.states {
            let buf = st.bufs[self.cur];
            let fresh = read_rows(&mut self.pool, &mut self.copier, buf, 0, n)?;
            write_rows(&mut self.pool, &mut self.copier, buf, 0, &fresh)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model without an encoder: features are the images, two states of 3 and 2 values; in
    /// `device` buffers when given.
    fn slots(cap: usize, device: Option<DeviceSlots>) -> Slots {
        Slots::new(SlotSpec {
            max_batch: cap,
            input_dims: &[1, 2],
            feature_dims: &[1, 2],
            classes: 3,
            states: vec![(&[3][..], 0.5), (&[2][..], -1.0)],
            step_inputs: vec!["x", "s0", "s1"],
            step_outputs: vec!["logits", "s0o", "s1o"],
            encoder: None,
            device,
        })
        .expect("slots")
    }

    /// The committed model's step session, for its allocator.
    fn step_session() -> Session {
        let (env, _) = crate::runtime::init(None).expect("ONNX Runtime");
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion-mnist/step.onnx");
        let opts = crate::runtime::SessionOptions {
            device: Device::Cpu,
            intra_threads: 1,
        };
        crate::runtime::build_session(&env, &file, &opts).expect("step session")
    }

    /// The row bookkeeping, the same in host memory and in ONNX Runtime's device buffers (the
    /// path `--device cuda` takes, here on the CPU allocator with ONNX Runtime copies).
    fn rows_are_filled_and_replaced(mut s: Slots) {
        let imgs: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32, 10.0 + i as f32]).collect();
        let refs: Vec<&[f32]> = imgs.iter().take(3).map(|v| v.as_slice()).collect();
        s.admit(&refs, None, true).expect("admit");
        assert_eq!(s.len(), 3);
        let row = |s: &mut Slots, st: usize, i: usize| s.membrane(st, i).expect("membrane");
        let feat = |s: &mut Slots, i: usize| s.features(i).expect("features");
        assert_eq!(row(&mut s, 0, 2), [0.5, 0.5, 0.5]);
        assert_eq!(row(&mut s, 1, 1), [-1.0, -1.0]);
        // Mark each row's membranes so that moves are visible.
        for i in 0..3 {
            let buf = s.states[0].bufs[s.cur];
            write_rows(&mut s.pool, &mut s.copier, buf, i, &[i as f32; 3]).expect("write");
        }
        assert_eq!(row(&mut s, 0, 1), [1.0, 1.0, 1.0]);
        // Row 0 leaves: row 2 moves into it, one row copied.
        s.swap_remove(0);
        assert!(s.broken.is_none());
        assert_eq!(s.len(), 2);
        assert_eq!(feat(&mut s, 0), [2.0, 12.0]);
        assert_eq!(row(&mut s, 0, 0), [2.0, 2.0, 2.0]);
        assert_eq!(row(&mut s, 1, 0), [-1.0, -1.0]);
        assert_eq!(feat(&mut s, 1), [1.0, 11.0]);
        assert_eq!(s.rows_moved, 1);
        // The last row leaves: nothing moves.
        s.swap_remove(1);
        assert_eq!(s.rows_moved, 1);
        assert_eq!(s.len(), 1);
        // A newcomer takes row 1 with fresh membranes; the survivor keeps its own.
        s.admit(&[&imgs[3]], None, true).expect("admit");
        assert_eq!(feat(&mut s, 1), [3.0, 13.0]);
        assert_eq!(row(&mut s, 0, 1), [0.5, 0.5, 0.5]);
        assert_eq!(row(&mut s, 0, 0), [2.0, 2.0, 2.0]);
        // A row's features are rewritten in place (a per_step model's next frame); rows that are
        // not active cannot be.
        s.write_features(1, &[7.0, 8.0]).expect("write one row");
        assert_eq!(feat(&mut s, 1), [7.0, 8.0]);
        assert_eq!(feat(&mut s, 0), [2.0, 12.0]);
        s.write_features(0, &[5.0, 6.0, 3.0, 13.0])
            .expect("write two rows");
        assert_eq!(feat(&mut s, 0), [5.0, 6.0]);
        assert_eq!(feat(&mut s, 1), [3.0, 13.0]);
        assert!(s.write_features(2, &[1.0, 2.0]).is_err());
        assert!(s.write_features(0, &[1.0]).is_err());
        // The copy-membranes ablation leaves the rows as they were.
        s.copy_membranes().expect("copy");
        assert_eq!(row(&mut s, 0, 0), [2.0, 2.0, 2.0]);
        assert_eq!(row(&mut s, 1, 1), [-1.0, -1.0]);
        // More newcomers than free rows: refused, nothing added.
        let three: Vec<&[f32]> = imgs.iter().take(3).map(|v| v.as_slice()).collect();
        assert!(s.admit(&three, None, true).is_err());
        assert_eq!(s.len(), 2);
        // A wrong input size is refused, nothing added.
        assert!(s.admit(&[&imgs[0], &[1.0][..]], None, true).is_err());
        assert_eq!(s.len(), 2);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn newcomers_fill_free_rows_and_leavers_are_replaced_by_the_last_row() {
        let s = slots(4, None);
        assert!(!s.on_device());
        rows_are_filled_and_replaced(s);
    }

    #[test]
    fn device_slots_keep_the_same_rows_through_onnx_runtime_copies() {
        let session = step_session();
        let memory = SlotMemoryChoice::Device.resolve(&Device::Cpu);
        let device = DeviceSlots::new(&session, &memory).expect("device slots");
        assert!(device.is_some());
        let s = slots(4, device);
        assert!(s.on_device());
        rows_are_filled_and_replaced(s);
        drop(session);
    }

    /// Device slots may outlive the step session they were allocated from: their allocator holds
    /// it (ONNX Runtime's allocator for a session is valid only while the session is).
    #[test]
    fn device_slots_keep_their_session_alive() {
        let session = step_session();
        let memory = SlotMemoryChoice::Device.resolve(&Device::Cpu);
        let device = DeviceSlots::new(&session, &memory).expect("device slots");
        let mut s = slots(2, device);
        drop(session);
        s.admit(&[&[1.0, 2.0]], None, true).expect("admit");
        assert_eq!(s.features(0).expect("features"), [1.0, 2.0]);
        assert_eq!(s.membrane(1, 0).expect("membrane"), [-1.0, -1.0]);
    }

    #[test]
    fn slot_memory_follows_the_device_unless_chosen() {
        let cuda = Device::Cuda(1);
        assert_eq!(
            SlotMemoryChoice::Auto.resolve(&Device::Cpu),
            SlotMemory::Host
        );
        assert_eq!(
            SlotMemoryChoice::Auto.resolve(&cuda),
            SlotMemory::Device(cuda.clone())
        );
        assert_eq!(SlotMemoryChoice::Host.resolve(&cuda), SlotMemory::Host);
        assert_eq!(
            SlotMemoryChoice::Device.resolve(&Device::Cpu),
            SlotMemory::Device(Device::Cpu)
        );
    }
}
