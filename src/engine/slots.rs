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
//! ONNX Runtime sees views of the first `n` rows: `OrtValue`s that borrow the buffers, created once
//! per batch size and side and then reused, and passed to the C API's `Run` both as inputs and as
//! preallocated outputs (the `ort` crate's preallocated outputs and I/O binding take only values it
//! allocated itself).
//!
//! Where the features and membranes live is [`SlotMemory`]: in host memory the worker owns (the
//! default on the CPU), or in buffers ONNX Runtime allocates on the step graph's device (the
//! default under `--device cuda`): then the membranes never leave the GPU between steps, a leaving
//! request's row is moved by a device-to-device copy, and only the logits (which the exit rule
//! reads on the host) and newcomers' inputs cross the bus. `--slot-memory device` on the CPU runs
//! that same path with ONNX Runtime's CPU allocator and copies, which is how it is tested without
//! a GPU.

#[allow(unsafe_code)]
pub mod ort_core;

use std::ffi::{c_char, c_void, CStr, CString};
use std::rc::Rc;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{Shape, TensorRef, TensorRefMut};
use ort::AsPointer;

use crate::error::Error;
use crate::runtime::Device;

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
    alloc: Rc<Allocator>,
    device: Device,
}

impl DeviceSlots {
    /// For `memory` next to `step` (the step graph's session, whose allocator for the device the
    /// buffers come from; it is valid only while that session is: drop the slots first). `None`
    /// for host memory.
    pub fn new(step: &Session, memory: &SlotMemory) -> Result<Option<DeviceSlots>, Error> {
        let (device, id, on) = match memory {
            SlotMemory::Host => return Ok(None),
            SlotMemory::Device(d @ Device::Cpu) => (AllocationDevice::CPU, 0, d),
            SlotMemory::Device(d @ Device::Cuda(id)) => (AllocationDevice::CUDA, *id, d),
        };
        let info = MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| Error::internal(format!("slot memory info: {e}")))?;
        let alloc = Allocator::new(step, info).map_err(|e| {
            Error::internal(format!(
                "cannot allocate the slots on the step graph's device ({}): {e}",
                on.provider_name()
            ))
        })?;
        Ok(Some(DeviceSlots {
            alloc: Rc::new(alloc),
            device: on.clone(),
        }))
    }
}

/// Copies between tensors with `Identity` graphs on the slots' device: ONNX Runtime moves the data
/// (host to device, device to device, device to host) as it does for any run, with the destination
/// given as a preallocated output. One graph copies one tensor (writes and reads); another copies
/// one row of every per-request tensor at once (a leaving request's row moves in one run). One
/// `Copier` per worker, so workers never share it. (The `ort` crate's own `copy_into` deadlocks on
/// its global copy session in this version.) Copies and steps run in different sessions, so on a
/// GPU in different streams: they are ordered because every run ends with a stream
/// synchronisation (the default run options); runs without it would need one shared stream.
pub struct Copier {
    one: CopyGraph,
    row: CopyGraph,
}

/// A session of [`identity_model`] with `k` tensors, and its names.
struct CopyGraph {
    session: Session,
    x: Names,
    y: Names,
}

impl CopyGraph {
    fn new(device: &Device, k: usize) -> Result<CopyGraph, Error> {
        let env = crate::runtime::loaded().map_err(Error::internal)?;
        let opts = crate::runtime::SessionOptions {
            device: device.clone(),
            intra_threads: 1,
        };
        let session = crate::runtime::build_session_from_memory(&env, &identity_model(k), &opts)
            .map_err(|e| {
                Error::internal(format!(
                    "slot copy graph on {}: {e}",
                    device.provider_name()
                ))
            })?;
        let names = |p: &str| (0..k).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let (x, y) = (names("x"), names("y"));
        Ok(CopyGraph {
            session,
            x: Names::new(&x.iter().map(String::as_str).collect::<Vec<_>>())?,
            y: Names::new(&y.iter().map(String::as_str).collect::<Vec<_>>())?,
        })
    }

    fn run(
        &mut self,
        src: &[*const ort::sys::OrtValue],
        dst: &mut [*mut ort::sys::OrtValue],
    ) -> Result<(), Error> {
        run_raw(&mut self.session, &self.x, src, &self.y, dst, "slot copy")
    }
}

impl Copier {
    /// For slots with `tensors` per-request tensors (the features and each state).
    fn new(device: &Device, tensors: usize) -> Result<Copier, Error> {
        Ok(Copier {
            one: CopyGraph::new(device, 1)?,
            row: CopyGraph::new(device, tensors)?,
        })
    }

    /// Copies `src` into `dst`, two rank-2 tensors of one shape.
    fn copy(
        &mut self,
        src: *const ort::sys::OrtValue,
        dst: *mut ort::sys::OrtValue,
    ) -> Result<(), Error> {
        self.one.run(&[src], &mut [dst])
    }

    /// Copies each `src[i]` into `dst[i]`: one row of every per-request tensor, in one run.
    fn copy_row(
        &mut self,
        src: &[*const ort::sys::OrtValue],
        dst: &mut [*mut ort::sys::OrtValue],
    ) -> Result<(), Error> {
        self.row.run(src, dst)
    }
}

/// The bytes of an ONNX model (IR 8, opset 13) with `k` `Identity` nodes, float input `x{i}` to
/// output `y{i}`, each of shape `[r{i}, l{i}]` with symbolic dimensions, encoded by hand (protobuf
/// wire format: every field here is a varint or length-delimited).
fn identity_model(k: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn int(out: &mut Vec<u8>, field: u64, v: u64) {
        varint(out, field << 3);
        varint(out, v);
    }
    fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    fn msg(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut m = Vec::new();
        f(&mut m);
        m
    }
    // ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1: { elem_type = 1 (FLOAT),
    // shape = 2: TensorShapeProto { dim = 1: Dimension { dim_param = 2 } } } } }
    let value_info = |name: &str, i: usize| {
        let mut shape = Vec::new();
        for d in [format!("r{i}"), format!("l{i}")] {
            bytes(&mut shape, 1, &msg(|dim| bytes(dim, 2, d.as_bytes())));
        }
        let tensor = msg(|t| {
            int(t, 1, 1);
            bytes(t, 2, &shape);
        });
        let ty = msg(|t| bytes(t, 1, &tensor));
        msg(|m| {
            bytes(m, 1, name.as_bytes());
            bytes(m, 2, &ty);
        })
    };
    // GraphProto { node = 1, name = 2, input = 11, output = 12 }; NodeProto { input = 1,
    // output = 2, name = 3, op_type = 4 }
    let graph = msg(|g| {
        for i in 0..k {
            let node = msg(|n| {
                bytes(n, 1, format!("x{i}").as_bytes());
                bytes(n, 2, format!("y{i}").as_bytes());
                bytes(n, 3, format!("copy{i}").as_bytes());
                bytes(n, 4, b"Identity");
            });
            bytes(g, 1, &node);
        }
        bytes(g, 2, b"slot_copy");
        for i in 0..k {
            bytes(g, 11, &value_info(&format!("x{i}"), i));
        }
        for i in 0..k {
            bytes(g, 12, &value_info(&format!("y{i}"), i));
        }
    });
    // ModelProto { ir_version = 1, producer_name = 2, graph = 7, opset_import = 8:
    // OperatorSetIdProto { domain = 1, version = 2 } }
    let opset = msg(|o| {
        bytes(o, 1, b"");
        int(o, 2, 13);
    });
    msg(|m| {
        int(m, 1, 8);
        bytes(m, 2, b"seenn-serve");
        bytes(m, 7, &graph);
        bytes(m, 8, &opset);
    })
}

fn copier(cp: &mut Option<Copier>) -> Result<&mut Copier, Error> {
    cp.as_mut()
        .ok_or_else(|| Error::internal("device slots without their copy session"))
}

/// Shape `[rows, dims...]`.
fn batch_shape(rows: usize, dims: &[usize]) -> Vec<usize> {
    let mut shape = Vec::with_capacity(1 + dims.len());
    shape.push(rows);
    shape.extend_from_slice(dims);
    shape
}

/// A zeroed `f32` buffer whose first element is 64-byte aligned (what ONNX Runtime allocates
/// itself). The heap block never moves: its pointer stays valid for the views made over it.
struct Buf {
    data: Vec<f32>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let data = vec![0f32; len + 16];
        let misalign = (data.as_ptr() as usize % 64) / std::mem::size_of::<f32>();
        let off = (16 - misalign) % 16;
        Buf { data, off, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.data[self.off..self.off + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[self.off..self.off + self.len]
    }

    /// A view of `rows` rows of `row_len` values starting at row `first`, shaped `[rows, dims...]`.
    ///
    /// # Safety
    /// The view borrows the buffer without a lifetime: it must be dropped before the buffer, and the
    /// buffer must not be read or written through a Rust reference while ONNX Runtime writes into it.
    unsafe fn view(
        &mut self,
        first: usize,
        rows: usize,
        row_len: usize,
        dims: &[usize],
    ) -> Result<TensorRefMut<'static, f32>, Error> {
        let start = first * row_len;
        let slice = &mut self.as_mut_slice()[start..start + rows * row_len];
        // SAFETY: the heap block outlives the view (see above) and is never reallocated.
        let slice: &'static mut [f32] =
            unsafe { std::slice::from_raw_parts_mut(slice.as_mut_ptr(), slice.len()) };
        TensorRefMut::from_array_view_mut((batch_shape(rows, dims), slice))
            .map_err(|e| Error::internal(format!("tensor view: {e}")))
    }
}

/// A buffer of `len` `f32`s that ONNX Runtime allocated on a device; the host never dereferences
/// its pointer, and every read, write and move goes through an ONNX Runtime copy.
struct DeviceBuf {
    ptr: *mut c_void,
    len: usize,
    alloc: Rc<Allocator>,
}

impl DeviceBuf {
    fn new(len: usize, alloc: &Rc<Allocator>) -> Result<DeviceBuf, Error> {
        let block = alloc.alloc::<f32>(len.max(1)).map_err(|e| {
            Error::internal(format!(
                "cannot allocate {len} slot values on the device: {e}"
            ))
        })?;
        Ok(DeviceBuf {
            ptr: block.into_raw(),
            len,
            alloc: alloc.clone(),
        })
    }

    /// A view of `rows` rows of `row_len` values from row `first`.
    ///
    /// # Safety
    /// As [`Buf::view`]: the view must be dropped before the buffer.
    unsafe fn view(
        &self,
        first: usize,
        rows: usize,
        row_len: usize,
        dims: &[usize],
    ) -> Result<TensorRefMut<'static, f32>, Error> {
        if (first + rows) * row_len > self.len {
            return Err(Error::internal("device view past the end of its buffer"));
        }
        let shape = Shape::new(batch_shape(rows, dims).into_iter().map(|d| d as i64));
        // SAFETY: the pointer is this allocator's block of `len` values, the view stays inside it.
        unsafe {
            let data = self.ptr.cast::<f32>().add(first * row_len).cast::<c_void>();
            TensorRefMut::from_raw(self.alloc.memory_info().clone(), data, shape)
                .map_err(|e| Error::internal(format!("device tensor view: {e}")))
        }
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this allocator's `alloc` and is freed once.
        unsafe { self.alloc.free(self.ptr) };
    }
}

/// A slot buffer in host memory or on the device.
enum Store {
    Host(Buf),
    Device(DeviceBuf),
}

impl Store {
    fn new(len: usize, alloc: Option<&Rc<Allocator>>) -> Result<Store, Error> {
        Ok(match alloc {
            None => Store::Host(Buf::new(len)),
            Some(a) => Store::Device(DeviceBuf::new(len, a)?),
        })
    }

    /// # Safety
    /// As [`Buf::view`].
    unsafe fn view(
        &mut self,
        first: usize,
        rows: usize,
        row_len: usize,
        dims: &[usize],
    ) -> Result<TensorRefMut<'static, f32>, Error> {
        // SAFETY: forwarded.
        unsafe {
            match self {
                Store::Host(b) => b.view(first, rows, row_len, dims),
                Store::Device(b) => b.view(first, rows, row_len, dims),
            }
        }
    }

    /// Writes `rows` rows of `row_len` values from `src` (host memory) at row `first`.
    fn write(
        &mut self,
        cp: &mut Option<Copier>,
        first: usize,
        row_len: usize,
        src: &[f32],
    ) -> Result<(), Error> {
        let rows = src.len() / row_len.max(1);
        match self {
            Store::Host(b) => {
                b.as_mut_slice()[first * row_len..first * row_len + src.len()].copy_from_slice(src);
                Ok(())
            }
            Store::Device(b) => {
                let host = TensorRef::from_array_view((vec![rows, row_len], src))
                    .map_err(|e| Error::internal(format!("tensor view: {e}")))?;
                // SAFETY: the view is dropped at the end of this block.
                let dst = unsafe { b.view(first, rows, row_len, &[row_len])? };
                copier(cp)?.copy(host.ptr(), dst.ptr().cast_mut())
            }
        }
    }

    /// `rows` rows of `row_len` values from row `first`, copied to the host.
    fn read(
        &self,
        cp: &mut Option<Copier>,
        first: usize,
        rows: usize,
        row_len: usize,
    ) -> Result<Vec<f32>, Error> {
        match self {
            Store::Host(b) => Ok(b.as_slice()[first * row_len..(first + rows) * row_len].to_vec()),
            Store::Device(b) => {
                let mut out = vec![0f32; rows * row_len];
                {
                    let host =
                        TensorRefMut::from_array_view_mut((vec![rows, row_len], &mut out[..]))
                            .map_err(|e| Error::internal(format!("tensor view: {e}")))?;
                    // SAFETY: the view is dropped at the end of this block.
                    let src = unsafe { b.view(first, rows, row_len, &[row_len])? };
                    copier(cp)?.copy(src.ptr(), host.ptr().cast_mut())?;
                }
                Ok(out)
            }
        }
    }
}

/// The graph's tensor names as C strings, in the order the views are passed.
struct Names {
    ptrs: Vec<*const c_char>,
    _owned: Vec<CString>,
}

impl Names {
    fn new(names: &[&str]) -> Result<Names, Error> {
        let owned = names
            .iter()
            .map(|n| CString::new(*n).map_err(|_| Error::internal(format!("tensor name {n:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Names {
            ptrs: owned.iter().map(|c| c.as_ptr()).collect(),
            _owned: owned,
        })
    }
}

/// The views of one `Run`: inputs and preallocated outputs, with their raw pointers.
struct Views {
    ins: Vec<*const ort::sys::OrtValue>,
    outs: Vec<*mut ort::sys::OrtValue>,
    _values: Vec<TensorRefMut<'static, f32>>,
}

impl Views {
    fn new(ins: Vec<TensorRefMut<'static, f32>>, outs: Vec<TensorRefMut<'static, f32>>) -> Views {
        let in_ptrs = ins.iter().map(|v| v.ptr()).collect();
        let out_ptrs = outs.iter().map(|v| v.ptr().cast_mut()).collect();
        let mut values = ins;
        values.extend(outs);
        Views {
            ins: in_ptrs,
            outs: out_ptrs,
            _values: values,
        }
    }
}

/// Runs `session` on prepared views through the C API; outputs land in the views' buffers.
fn run_views(
    session: &mut Session,
    in_names: &Names,
    out_names: &Names,
    views: &mut Views,
    what: &str,
) -> Result<(), Error> {
    run_raw(
        session,
        in_names,
        &views.ins,
        out_names,
        &mut views.outs,
        what,
    )
}

/// `Run` with values as raw pointers: `ins` and the preallocated `outs`, in the names' order.
fn run_raw(
    session: &mut Session,
    in_names: &Names,
    ins: &[*const ort::sys::OrtValue],
    out_names: &Names,
    outs: &mut [*mut ort::sys::OrtValue],
    what: &str,
) -> Result<(), Error> {
    if ins.len() != in_names.ptrs.len() || outs.len() != out_names.ptrs.len() {
        return Err(Error::internal(format!(
            "{what}: values and names differ in number"
        )));
    }
    let api = ort::api();
    // SAFETY: the session pointer is live for the call (`&mut` keeps `Run` single-threaded, as the
    // `ort` crate does); names and values are valid, match in number, and the outputs are
    // preallocated tensors of the shapes the graph produces.
    unsafe {
        let status = (api.Run)(
            session.ptr().cast_mut(),
            std::ptr::null(),
            in_names.ptrs.as_ptr(),
            ins.as_ptr(),
            ins.len(),
            out_names.ptrs.as_ptr(),
            out_names.ptrs.len(),
            outs.as_mut_ptr(),
        );
        if !status.0.is_null() {
            let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            return Err(Error::internal(format!("{what}: {msg}")));
        }
    }
    Ok(())
}

/// One row's input and output of `exit.onnx` in buffers allocated once, with their views: the
/// learned rule scores each row in a run of its own (see the engine's `learned_scores`), and those
/// runs allocate nothing.
pub struct ExitRow {
    aggregate: Buf,
    timestep: Buf,
    output: Buf,
    in_names: Names,
    out_names: Names,
    views: Option<Views>,
}

impl ExitRow {
    /// `classes` values of the running sum in; `names` are the aggregate and timestep inputs and the
    /// output, as the manifest names them.
    pub fn new(classes: usize, names: [&str; 3]) -> Result<ExitRow, Error> {
        let [aggregate, timestep, output] = names;
        let mut row = ExitRow {
            aggregate: Buf::new(classes),
            timestep: Buf::new(1),
            output: Buf::new(1),
            in_names: Names::new(&[aggregate, timestep])?,
            out_names: Names::new(&[output])?,
            views: None,
        };
        // SAFETY: the views live in `views`, which `Drop for ExitRow` clears before the buffers go;
        // ONNX Runtime touches the buffers only inside `run_views`.
        let (ins, outs) = unsafe {
            (
                vec![
                    row.aggregate.view(0, 1, classes, &[classes])?,
                    row.timestep.view(0, 1, 1, &[1])?,
                ],
                vec![row.output.view(0, 1, 1, &[1])?],
            )
        };
        row.views = Some(Views::new(ins, outs));
        Ok(row)
    }

    /// The stop probability of one row: its running sum cast to float32, and its t.
    pub fn score(&mut self, session: &mut Session, sum: &[f64], t: usize) -> Result<f32, Error> {
        let agg = self.aggregate.as_mut_slice();
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
        self.timestep.as_mut_slice()[0] = t as f32;
        let Some(views) = self.views.as_mut() else {
            return Err(Error::internal("exit.onnx views missing"));
        };
        run_views(session, &self.in_names, &self.out_names, views, "exit.onnx")?;
        Ok(self.output.as_slice()[0])
    }
}

impl Drop for ExitRow {
    fn drop(&mut self) {
        // The views borrow the buffers: release them first.
        self.views = None;
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
    dims: Vec<usize>,
    len: usize,
    initial: f32,
    /// `bufs[side]` is read by the step when `side == cur`, written when not.
    bufs: [Store; 2],
}

pub struct Slots {
    cap: usize,
    n: usize,
    input_dims: Vec<usize>,
    input_len: usize,
    feature_dims: Vec<usize>,
    feature_len: usize,
    classes: usize,
    /// Newcomers' (or, under `encoder-every-step`, every active request's) images for the encoder.
    images: Buf,
    features: Store,
    /// Always on the host: the exit rule reads every row's logits after each step.
    logits: Buf,
    states: Vec<State>,
    /// Which side of each state's pair holds the current membranes.
    cur: usize,
    step_in: Names,
    step_out: Names,
    encoder_names: Option<(Names, Names)>,
    /// `step_views[2 * (n - 1) + cur]`, made on first use.
    step_views: Vec<Option<Views>>,
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
        let input_len = spec.input_dims.iter().product::<usize>();
        let feature_len = spec.feature_dims.iter().product::<usize>();
        let (dev, copier) = match spec.device {
            Some(d) => (
                Some(d.alloc),
                Some(Copier::new(&d.device, 1 + spec.states.len())?),
            ),
            None => (None, None),
        };
        let dev = dev.as_ref();
        let states = spec
            .states
            .iter()
            .map(|(dims, initial)| {
                let len = dims.iter().product::<usize>();
                Ok(State {
                    dims: dims.to_vec(),
                    len,
                    initial: *initial,
                    bufs: [Store::new(cap * len, dev)?, Store::new(cap * len, dev)?],
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let encoder_names = match spec.encoder {
            Some((i, o)) => Some((Names::new(&[i])?, Names::new(&[o])?)),
            None => None,
        };
        Ok(Slots {
            cap,
            n: 0,
            input_dims: spec.input_dims.to_vec(),
            input_len,
            feature_dims: spec.feature_dims.to_vec(),
            feature_len,
            classes: spec.classes,
            images: Buf::new(cap * input_len),
            features: Store::new(cap * feature_len, dev)?,
            logits: Buf::new(cap * spec.classes),
            states,
            cur: 0,
            step_in: Names::new(&spec.step_inputs)?,
            step_out: Names::new(&spec.step_outputs)?,
            encoder_names,
            step_views: (0..2 * cap).map(|_| None).collect(),
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
        match (&mut self.features, encoder.is_some()) {
            (_, true) => {
                for (i, x) in images.iter().enumerate() {
                    self.images.as_mut_slice()[i * self.input_len..(i + 1) * self.input_len]
                        .copy_from_slice(x);
                }
            }
            (Store::Host(b), false) => {
                let fl = self.feature_len;
                for (i, x) in images.iter().enumerate() {
                    b.as_mut_slice()[(first + i) * fl..(first + i + 1) * fl].copy_from_slice(x);
                }
            }
            (dev, false) => {
                // The newcomers' rows are contiguous: one copy to the device for all of them.
                self.initial.clear();
                for x in images {
                    self.initial.extend_from_slice(x);
                }
                dev.write(&mut self.copier, first, self.feature_len, &self.initial)?;
            }
        }
        if let (Some(session), true) = (encoder, encode) {
            self.encode_rows(session, first, m)?;
        }
        for st in &mut self.states {
            match &mut st.bufs[self.cur] {
                Store::Host(b) => {
                    b.as_mut_slice()[first * st.len..(first + m) * st.len].fill(st.initial)
                }
                dev => {
                    self.initial.clear();
                    self.initial.resize(m * st.len, st.initial);
                    dev.write(&mut self.copier, first, st.len, &self.initial)?;
                }
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
        self.features.write(&mut self.copier, first, fl, rows)
    }

    /// Runs the encoder over `images` rows `0..m` into feature rows `first..first + m`.
    fn encode_rows(&mut self, session: &mut Session, first: usize, m: usize) -> Result<(), Error> {
        let Some((in_names, out_names)) = &self.encoder_names else {
            return Err(Error::internal("the model has no encoder graph"));
        };
        // SAFETY: the views are dropped at the end of this function, before any buffer is touched.
        let mut views = unsafe {
            Views::new(
                vec![self.images.view(0, m, self.input_len, &self.input_dims)?],
                vec![self
                    .features
                    .view(first, m, self.feature_len, &self.feature_dims)?],
            )
        };
        run_views(session, in_names, out_names, &mut views, "encoder.onnx")
    }

    /// Re-encodes every active row from `images` (the `encoder-every-step` ablation).
    pub fn encode_all(&mut self, images: &[&[f32]], session: &mut Session) -> Result<(), Error> {
        let n = images.len().min(self.n);
        for (i, x) in images.iter().take(n).enumerate() {
            self.images.as_mut_slice()[i * self.input_len..(i + 1) * self.input_len]
                .copy_from_slice(x);
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

    /// Copies row `from` of the features and of every current state onto row `to`, in host memory.
    fn move_host_row(&mut self, from: usize, to: usize) -> Result<(), Error> {
        let cur = self.cur;
        let tensors = std::iter::once((&mut self.features, self.feature_len))
            .chain(self.states.iter_mut().map(|st| (&mut st.bufs[cur], st.len)));
        for (store, len) in tensors {
            let Store::Host(b) = store else {
                return Err(Error::internal("a device buffer among host slots"));
            };
            b.as_mut_slice()
                .copy_within(from * len..(from + 1) * len, to * len);
        }
        Ok(())
    }

    /// Copies row `from` of the features and of every current state onto row `to`, on the device,
    /// in one run of the copy graph.
    fn move_device_row(&mut self, from: usize, to: usize) -> Result<(), Error> {
        let mut src = Vec::with_capacity(1 + self.states.len());
        let mut dst = Vec::with_capacity(1 + self.states.len());
        let tensors = std::iter::once((&self.features, self.feature_len))
            .chain(self.states.iter().map(|st| (&st.bufs[self.cur], st.len)));
        for (store, len) in tensors {
            let Store::Device(b) = store else {
                return Err(Error::internal("a host buffer among device slots"));
            };
            // SAFETY: the views are dropped at the end of this function; the rows do not overlap.
            unsafe {
                src.push(b.view(from, 1, len, &[len])?);
                dst.push(b.view(to, 1, len, &[len])?);
            }
        }
        let src_ptrs: Vec<_> = src.iter().map(|v| v.ptr()).collect();
        let mut dst_ptrs: Vec<_> = dst.iter().map(|v| v.ptr().cast_mut()).collect();
        copier(&mut self.copier)?.copy_row(&src_ptrs, &mut dst_ptrs)
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
        if self.step_views[key].is_none() {
            let cur = self.cur;
            let mut ins = Vec::with_capacity(1 + self.states.len());
            let mut outs = Vec::with_capacity(1 + self.states.len());
            // SAFETY: the views live in `step_views`, which `Drop for Slots` clears before the
            // buffers go; ONNX Runtime touches the buffers only inside `run_views`.
            unsafe {
                ins.push(
                    self.features
                        .view(0, n, self.feature_len, &self.feature_dims)?,
                );
                let k = self.classes;
                outs.push(self.logits.view(0, n, k, &[k])?);
                for st in &mut self.states {
                    let (len, dims) = (st.len, st.dims.clone());
                    let [a, b] = &mut st.bufs;
                    let (src, dst) = if cur == 0 { (a, b) } else { (b, a) };
                    ins.push(src.view(0, n, len, &dims)?);
                    outs.push(dst.view(0, n, len, &dims)?);
                }
            }
            self.step_views[key] = Some(Views::new(ins, outs));
        }
        let Some(views) = self.step_views[key].as_mut() else {
            return Err(Error::internal("step views missing"));
        };
        run_views(session, &self.step_in, &self.step_out, views, "step.onnx")?;
        self.cur ^= 1;
        Ok(())
    }

    /// Row `i`'s logits of the last step.
    pub fn logits(&self, i: usize) -> &[f32] {
        let k = self.classes;
        &self.logits.as_slice()[i * k..(i + 1) * k]
    }

    /// Row `i`'s current membranes of state `s`, copied to the host (tests).
    pub fn membrane(&mut self, s: usize, i: usize) -> Result<Vec<f32>, Error> {
        let st = &self.states[s];
        st.bufs[self.cur].read(&mut self.copier, i, 1, st.len)
    }

    /// Row `i`'s features, copied to the host (tests).
    pub fn features(&mut self, i: usize) -> Result<Vec<f32>, Error> {
        self.features.read(&mut self.copier, i, 1, self.feature_len)
    }

    /// Whether features and membranes live in device buffers.
    pub fn on_device(&self) -> bool {
        matches!(self.features, Store::Device(_))
    }

    /// The `copy-membranes` ablation: what rebuilding the batch after every step costs, i.e. every
    /// active row of every state copied into a freshly allocated buffer and back.
    pub fn copy_membranes(&mut self) -> Result<(), Error> {
        let n = self.n;
        if n == 0 {
            return Ok(());
        }
        for st in &mut self.states {
            let fresh = st.bufs[self.cur].read(&mut self.copier, 0, n, st.len)?;
            st.bufs[self.cur].write(&mut self.copier, 0, st.len, &fresh)?;
        }
        Ok(())
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // The views borrow the buffers: release them first.
        self.step_views.clear();
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

    #[test]
    fn buffers_are_aligned() {
        for len in [1, 7, 100] {
            let b = Buf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(b.as_slice().len(), len);
        }
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
            let cur = s.cur;
            s.states[0].bufs[cur]
                .write(&mut s.copier, i, 3, &[i as f32; 3])
                .expect("write");
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
