//! The slots' only contact with raw memory and ONNX Runtime's C API, behind a small safe API.
//!
//! - [`Pool`] owns `f32` buffers of a fixed number of rows: in host memory (zeroed, 64-byte aligned,
//!   [`Pool::add_host`]) or allocated by ONNX Runtime on a device ([`Pool::add`] with a
//!   [`DeviceAlloc`]). A buffer lives, at the address it was allocated at, as long as its pool;
//!   there is no way to free, replace or resize one. Host buffers are read and written as slices
//!   ([`Pool::host`], [`Pool::host_of_mut`]); device buffers only by ONNX Runtime.
//! - [`Rows`] names rows of a buffer ([`BufId::rows`]); [`Src`] and [`Dst`] are a run's inputs and
//!   preallocated outputs: pool rows, or a host slice the caller lends for the run.
//! - [`Pool::bind`] makes the `OrtValue`s of one run, a [`Binding`] that borrows the pool mutably
//!   (and the lent slices) for as long as it lives: no buffer can be read, written or dropped
//!   while ONNX Runtime may write into it, and a binding cannot outlive its pool.
//! - [`Binding::run`] runs a session on a binding (the C API's `Run` with preallocated outputs:
//!   the `ort` crate's preallocated outputs and I/O binding take only values it allocated itself).
//! - [`Pool::cache`] and [`Pool::run_cached`] keep bindings of pool rows inside the pool, keyed by
//!   the caller, so that a step reuses its `OrtValue`s instead of making them per run.
//! - [`IoNames`]: a graph's input and output names as C strings.
//!
//! A binding's outputs may not overlap any other of its rows (checked).
//!
//! Misuse is a compile error. A binding cannot outlive its pool:
//!
//! ```compile_fail,E0505
//! use seenn_serve::engine::slots::ort_core::Pool;
//! let mut pool = Pool::new();
//! let (a, b) = (pool.add_host(4, &[2]), pool.add_host(4, &[2]));
//! let binding = pool.bind([a.rows(0, 4).into()], [b.rows(0, 4).into()]).unwrap();
//! drop(pool);
//! drop(binding);
//! ```
//!
//! A buffer cannot be read (or written) while a binding that ONNX Runtime writes through exists:
//!
//! ```compile_fail,E0502
//! use ort::session::Session;
//! use seenn_serve::engine::slots::ort_core::{CoreError, HostId, IoNames, Pool};
//! fn step(s: &mut Session, pool: &mut Pool, n: &IoNames, a: HostId, b: HostId) -> Result<f32, CoreError> {
//!     let mut binding = pool.bind([a.rows(0, 4).into()], [b.rows(0, 4).into()])?;
//!     let before = pool.host(b)[0];
//!     binding.run(s, n, "step")?;
//!     Ok(before)
//! }
//! ```
//!
//! nor can a host slice lent to a binding:
//!
//! ```compile_fail,E0499
//! use ort::session::Session;
//! use seenn_serve::engine::slots::ort_core::{CoreError, Dst, HostId, IoNames, Pool};
//! fn read(s: &mut Session, pool: &mut Pool, n: &IoNames, a: HostId) -> Result<Vec<f32>, CoreError> {
//!     let mut out = vec![0f32; 8];
//!     let mut binding = pool.bind([a.rows(0, 4).flat().into()], [Dst::host(&mut out, 2)])?;
//!     out[0] = 1.0;
//!     binding.run(s, n, "copy")?;
//!     Ok(out)
//! }
//! ```
//!
//! The same code in the right order compiles:
//!
//! ```no_run
//! use ort::session::Session;
//! use seenn_serve::engine::slots::ort_core::{CoreError, Dst, HostId, IoNames, Pool};
//! fn step(s: &mut Session, pool: &mut Pool, n: &IoNames, a: HostId, b: HostId) -> Result<f32, CoreError> {
//!     let before = pool.host(b)[0];
//!     pool.bind([a.rows(0, 4).into()], [b.rows(0, 4).into()])?.run(s, n, "step")?;
//!     Ok(before + pool.host(b)[0])
//! }
//! fn read(s: &mut Session, pool: &mut Pool, n: &IoNames, a: HostId) -> Result<Vec<f32>, CoreError> {
//!     let mut out = vec![0f32; 8];
//!     let mut binding = pool.bind([a.rows(0, 4).flat().into()], [Dst::host(&mut out, 2)])?;
//!     binding.run(s, n, "copy")?;
//!     drop(binding);
//!     out[0] = 1.0;
//!     Ok(out)
//! }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]

use std::alloc::Layout;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use ort::memory::{Allocator, MemoryInfo};
use ort::session::{Session, SharedSessionInner};
use ort::sys::OrtValue;
use ort::value::{Shape, TensorRef, TensorRefMut};
use ort::AsPointer;

/// What can go wrong in the core; every case is an internal error of the engine. `Display` says
/// what failed, `source()` why (an `ort::Error`), when there is a cause.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("tensor view")]
    View(#[source] ort::Error),
    #[error("rows {first}..{end} of a buffer of {rows} rows", end = first + count)]
    OutOfBounds {
        first: usize,
        count: usize,
        rows: usize,
    },
    #[error("no buffer {0} in this pool")]
    NoBuffer(usize),
    #[error("{values} values are not whole rows of {row_len}")]
    NotWholeRows { values: usize, row_len: usize },
    #[error("an output's rows overlap other rows of the same run")]
    Overlap,
    #[error("cannot allocate {len} slot values on the device")]
    Alloc {
        len: usize,
        #[source]
        source: ort::Error,
    },
    #[error("tensor name {0:?}")]
    Name(String),
    #[error("{0}: values and names differ in number")]
    Arity(String),
    #[error("no cached run {0}")]
    NotCached(usize),
    /// ONNX Runtime's `Run` failed; `message` is its status message.
    #[error("{what}: {message}")]
    Run { what: String, message: String },
}

impl CoreError {
    /// ONNX Runtime's error that caused this one, when there is one (what `source()` shows).
    pub fn into_cause(self) -> Option<ort::Error> {
        match self {
            CoreError::View(e) | CoreError::Alloc { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// ONNX Runtime's allocator for a device, from a session: what device buffers are allocated with.
pub struct DeviceAlloc {
    /// Declared (so dropped) before `_session`.
    alloc: Allocator,
    /// The session `alloc` came from: ONNX Runtime's allocator for a session is valid only while
    /// that session is, so the allocator keeps it (and each device buffer keeps the allocator).
    _session: Arc<SharedSessionInner>,
}

impl DeviceAlloc {
    /// `session`'s allocator for the memory `info` describes.
    pub fn new(session: &Session, info: MemoryInfo<'_>) -> ort::Result<DeviceAlloc> {
        Ok(DeviceAlloc {
            alloc: Allocator::new(session, info)?,
            _session: session.inner(),
        })
    }
}

/// A buffer of a [`Pool`] (host or device memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufId(usize);

/// A buffer of a [`Pool`] in host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostId(usize);

impl From<HostId> for BufId {
    fn from(id: HostId) -> BufId {
        BufId(id.0)
    }
}

impl BufId {
    /// Rows `first..first + count`, shaped `[count, dims...]` (the buffer's row shape).
    pub fn rows(self, first: usize, count: usize) -> Rows {
        Rows {
            buf: self.0,
            first,
            count,
            flat: false,
        }
    }
}

impl HostId {
    /// As [`BufId::rows`].
    pub fn rows(self, first: usize, count: usize) -> Rows {
        BufId::from(self).rows(first, count)
    }
}

/// Rows of a pool buffer, as a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    buf: usize,
    first: usize,
    count: usize,
    flat: bool,
}

impl Rows {
    /// The same rows as a rank-2 tensor `[count, row_len]`.
    pub fn flat(self) -> Rows {
        Rows { flat: true, ..self }
    }

    fn overlaps(&self, o: &Rows) -> bool {
        self.buf == o.buf
            && self.count > 0
            && o.count > 0
            && self.first < o.first + o.count
            && o.first < self.first + self.count
    }
}

/// An input of a run: pool rows, or host values lent for the run as `[len / row_len, row_len]`.
pub enum Src<'a> {
    Rows(Rows),
    Host { data: &'a [f32], row_len: usize },
}

/// A preallocated output of a run: pool rows, or a host slice lent for the run as
/// `[len / row_len, row_len]`.
pub enum Dst<'a> {
    Rows(Rows),
    Host { data: &'a mut [f32], row_len: usize },
}

impl From<Rows> for Src<'_> {
    fn from(r: Rows) -> Self {
        Src::Rows(r)
    }
}

impl From<Rows> for Dst<'_> {
    fn from(r: Rows) -> Self {
        Dst::Rows(r)
    }
}

impl<'a> Src<'a> {
    pub fn host(data: &'a [f32], row_len: usize) -> Src<'a> {
        Src::Host { data, row_len }
    }
}

impl<'a> Dst<'a> {
    pub fn host(data: &'a mut [f32], row_len: usize) -> Dst<'a> {
        Dst::Host { data, row_len }
    }
}

/// `[len / row_len, row_len]`, when `len` is whole rows.
fn flat_shape(len: usize, row_len: usize) -> Result<[usize; 2], CoreError> {
    let rows = len.checked_div(row_len).unwrap_or(0);
    if rows * row_len != len {
        return Err(CoreError::NotWholeRows {
            values: len,
            row_len,
        });
    }
    Ok([rows, row_len])
}

enum Memory {
    Host,
    Device(Rc<DeviceAlloc>),
}

/// One buffer: `rows * row_len` values from `ptr`, allocated by `new_host` or `new_device`, freed
/// by `Drop` and nowhere else; `ptr` never changes.
struct Block {
    ptr: NonNull<f32>,
    rows: usize,
    row_len: usize,
    dims: Vec<usize>,
    memory: Memory,
}

/// Host blocks: at least one value (a zero-sized allocation is not allowed), 64-byte aligned (as
/// ONNX Runtime aligns its own).
fn host_layout(len: usize) -> Layout {
    Layout::array::<f32>(len.max(1))
        .and_then(|l| l.align_to(64))
        .expect("slot buffer size overflows")
}

impl Block {
    fn new_host(rows: usize, dims: &[usize]) -> Block {
        let row_len = dims.iter().product::<usize>();
        let layout = host_layout(rows * row_len);
        // SAFETY: the layout's size is not zero (`host_layout`).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<f32>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        Block {
            ptr,
            rows,
            row_len,
            dims: dims.to_vec(),
            memory: Memory::Host,
        }
    }

    fn new_device(
        rows: usize,
        dims: &[usize],
        alloc: &Rc<DeviceAlloc>,
    ) -> Result<Block, CoreError> {
        let row_len = dims.iter().product::<usize>();
        let len = rows * row_len;
        let block = alloc
            .alloc
            .alloc::<f32>(len.max(1))
            .map_err(|source| CoreError::Alloc { len, source })?;
        let ptr = NonNull::new(block.into_raw().cast::<f32>()).ok_or(CoreError::Alloc {
            len,
            source: ort::Error::new("null allocation"),
        })?;
        Ok(Block {
            ptr,
            rows,
            row_len,
            dims: dims.to_vec(),
            memory: Memory::Device(alloc.clone()),
        })
    }

    fn len(&self) -> usize {
        self.rows * self.row_len
    }

    fn slice(&self) -> Option<&[f32]> {
        if !matches!(self.memory, Memory::Host) {
            return None;
        }
        // SAFETY: a host block is `len` initialised `f32`s (zeroed when allocated; ONNX Runtime
        // writes only `f32`s), alive as long as `self`. ONNX Runtime writes into it only inside
        // `Binding::run`, and every binding that points into a pool keeps the pool mutably borrowed
        // (`Pool::bind`) or lives inside it (`Pool::run_cached` borrows it mutably), so no slice of
        // the block exists while it runs.
        let s = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) };
        Some(s)
    }

    fn slice_mut(&mut self) -> Option<&mut [f32]> {
        if !matches!(self.memory, Memory::Host) {
            return None;
        }
        // SAFETY: as in `slice`; `&mut self` makes this the only slice of the block.
        let s = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) };
        Some(s)
    }

    /// A tensor over `rows` of this block, which ONNX Runtime may read and write through.
    ///
    /// # Safety
    /// The tensor must be dropped before the block, and ONNX Runtime may use it only while no slice
    /// of the block exists (see [`Block::slice`]).
    unsafe fn tensor<'t>(&self, rows: &Rows) -> Result<TensorRefMut<'t, f32>, CoreError> {
        if rows.first + rows.count > self.rows {
            return Err(CoreError::OutOfBounds {
                first: rows.first,
                count: rows.count,
                rows: self.rows,
            });
        }
        let mut shape = Vec::with_capacity(1 + self.dims.len());
        shape.push(rows.count as i64);
        if rows.flat {
            shape.push(self.row_len as i64);
        } else {
            shape.extend(self.dims.iter().map(|&d| d as i64));
        }
        let info = match &self.memory {
            Memory::Host => MemoryInfo::default(),
            Memory::Device(a) => a.alloc.memory_info().clone(),
        };
        let data = self
            .ptr
            .as_ptr()
            .wrapping_add(rows.first * self.row_len)
            .cast::<c_void>();
        // SAFETY: `data` is followed by `count * row_len` values of this block (checked above), in
        // the memory `info` describes; the caller keeps the block alive while the tensor is.
        unsafe { TensorRefMut::from_raw(info, data, Shape::new(shape)) }.map_err(CoreError::View)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        match &self.memory {
            // SAFETY: `ptr` came from `alloc_zeroed` with this layout (`new_host`) and is freed once.
            Memory::Host => unsafe {
                std::alloc::dealloc(self.ptr.as_ptr().cast(), host_layout(self.len()))
            },
            // SAFETY: `ptr` came from this allocator's `alloc` (`new_device`) and is freed once.
            Memory::Device(a) => unsafe { a.alloc.free(self.ptr.as_ptr()) },
        }
    }
}

/// A graph's tensor names as C strings, in the order of a binding's values.
struct Names {
    /// Point into `_owned`, whose heap strings do not move when `Names` does.
    ptrs: Vec<*const c_char>,
    _owned: Vec<CString>,
}

impl Names {
    fn new(names: &[&str]) -> Result<Names, CoreError> {
        let owned = names
            .iter()
            .map(|n| CString::new(*n).map_err(|_| CoreError::Name(n.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Names {
            ptrs: owned.iter().map(|c| c.as_ptr()).collect(),
            _owned: owned,
        })
    }
}

/// A graph's input and output names, in the order a binding's inputs and outputs are given.
pub struct IoNames {
    ins: Names,
    outs: Names,
}

impl IoNames {
    pub fn new(ins: &[&str], outs: &[&str]) -> Result<IoNames, CoreError> {
        Ok(IoNames {
            ins: Names::new(ins)?,
            outs: Names::new(outs)?,
        })
    }
}

/// The `OrtValue`s of one run: inputs and preallocated outputs, alive for `'a` (while the buffers
/// and slices they view are borrowed).
pub struct Binding<'a> {
    in_ptrs: Vec<*const OrtValue>,
    out_ptrs: Vec<*mut OrtValue>,
    /// Own the values `in_ptrs` and `out_ptrs` point to.
    _ins: Vec<TensorRef<'a, f32>>,
    _outs: Vec<TensorRefMut<'a, f32>>,
}

impl Binding<'_> {
    /// Runs `session` on the inputs, into the outputs: the graph's outputs are written straight
    /// into the buffers and slices.
    pub fn run(
        &mut self,
        session: &mut Session,
        names: &IoNames,
        what: &str,
    ) -> Result<(), CoreError> {
        if self.in_ptrs.len() != names.ins.ptrs.len()
            || self.out_ptrs.len() != names.outs.ptrs.len()
        {
            return Err(CoreError::Arity(what.to_string()));
        }
        let api = ort::api();
        // SAFETY: the session pointer is live for the call (`&mut` keeps `Run` single-threaded, as
        // the `ort` crate does); the names are NUL-terminated strings owned by `names`, the values
        // are live tensors owned by `self`, and they match in number (checked above); the outputs
        // are preallocated tensors over memory nothing else reads or writes during the call (the
        // binding borrows it). ONNX Runtime checks the values' types and shapes against the graph.
        let status = unsafe {
            (api.Run)(
                session.ptr().cast_mut(),
                std::ptr::null(),
                names.ins.ptrs.as_ptr(),
                self.in_ptrs.as_ptr(),
                self.in_ptrs.len(),
                names.outs.ptrs.as_ptr(),
                names.outs.ptrs.len(),
                self.out_ptrs.as_mut_ptr(),
            )
        };
        let Some(status) = NonNull::new(status.0) else {
            return Ok(());
        };
        // SAFETY: `status` is a live status returned by `Run`, released only below.
        let message = unsafe { (api.GetErrorMessage)(status.as_ptr()) };
        // SAFETY: the message is a NUL-terminated string owned by `status`, still live; it is
        // copied before the status is released.
        let message = unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `status` came from `Run`, is released once and not used after.
        unsafe { (api.ReleaseStatus)(status.as_ptr()) };
        Err(CoreError::Run {
            what: what.to_string(),
            message,
        })
    }
}

/// Buffers that ONNX Runtime reads and writes in place, and bindings of them kept for reuse.
pub struct Pool {
    /// Point into `blocks`: cleared first by `Drop`.
    cached: Vec<Option<Binding<'static>>>,
    blocks: Vec<Block>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl Pool {
    pub fn new() -> Pool {
        Pool {
            cached: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// A zeroed host buffer of `rows` rows shaped `dims`.
    pub fn add_host(&mut self, rows: usize, dims: &[usize]) -> HostId {
        self.blocks.push(Block::new_host(rows, dims));
        HostId(self.blocks.len() - 1)
    }

    /// A buffer of `rows` rows shaped `dims`: on `device` when given (its values undefined until
    /// written), else in host memory (zeroed).
    pub fn add(
        &mut self,
        rows: usize,
        dims: &[usize],
        device: Option<&Rc<DeviceAlloc>>,
    ) -> Result<BufId, CoreError> {
        let Some(alloc) = device else {
            return Ok(self.add_host(rows, dims).into());
        };
        self.blocks.push(Block::new_device(rows, dims, alloc)?);
        Ok(BufId(self.blocks.len() - 1))
    }

    /// Whether `id` is in device memory.
    pub fn on_device(&self, id: BufId) -> bool {
        matches!(self.blocks[id.0].memory, Memory::Device(_))
    }

    /// The number of values in one row of `id`.
    pub fn row_len(&self, id: BufId) -> usize {
        self.blocks[id.0].row_len
    }

    /// A host buffer's values. Panics on an id of another pool that names a device buffer here.
    pub fn host(&self, id: HostId) -> &[f32] {
        self.blocks[id.0].slice().expect("a host buffer")
    }

    /// As [`Pool::host`], to write.
    pub fn host_mut(&mut self, id: HostId) -> &mut [f32] {
        self.blocks[id.0].slice_mut().expect("a host buffer")
    }

    /// `id`'s values when it is in host memory.
    pub fn host_of(&self, id: BufId) -> Option<&[f32]> {
        self.blocks[id.0].slice()
    }

    /// As [`Pool::host_of`], to write.
    pub fn host_of_mut(&mut self, id: BufId) -> Option<&mut [f32]> {
        self.blocks[id.0].slice_mut()
    }

    /// The values of one run over this pool's rows and lent slices.
    pub fn bind<'a>(
        &'a mut self,
        ins: impl IntoIterator<Item = Src<'a>>,
        outs: impl IntoIterator<Item = Dst<'a>>,
    ) -> Result<Binding<'a>, CoreError> {
        // SAFETY: the binding lives at most for `'a`, while the pool is borrowed mutably: its
        // blocks stay alive and no slice of them exists.
        unsafe { self.binding(ins, outs) }
    }

    /// Keeps a binding of pool rows under `key` (replacing any before) for [`Pool::run_cached`].
    pub fn cache(&mut self, key: usize, ins: &[Rows], outs: &[Rows]) -> Result<(), CoreError> {
        // SAFETY: the binding views only this pool's blocks (`Src::Rows`, `Dst::Rows`), which live
        // and stay where they are until `Drop for Pool`, which drops `cached` first; it runs only
        // in `run_cached`, which borrows the pool mutably, so no slice of a block exists then.
        let binding: Binding<'static> = unsafe {
            self.binding(
                ins.iter().map(|&r| Src::Rows(r)),
                outs.iter().map(|&r| Dst::Rows(r)),
            )?
        };
        if self.cached.len() <= key {
            self.cached.resize_with(key + 1, || None);
        }
        self.cached[key] = Some(binding);
        Ok(())
    }

    pub fn is_cached(&self, key: usize) -> bool {
        matches!(self.cached.get(key), Some(Some(_)))
    }

    /// Runs `session` on the binding kept under `key`.
    pub fn run_cached(
        &mut self,
        key: usize,
        session: &mut Session,
        names: &IoNames,
        what: &str,
    ) -> Result<(), CoreError> {
        match self.cached.get_mut(key) {
            Some(Some(b)) => b.run(session, names, what),
            _ => Err(CoreError::NotCached(key)),
        }
    }

    /// # Safety
    /// The binding must be dropped before the pool, and run only while no slice of the pool's
    /// blocks exists.
    unsafe fn binding<'t>(
        &self,
        ins: impl IntoIterator<Item = Src<'t>>,
        outs: impl IntoIterator<Item = Dst<'t>>,
    ) -> Result<Binding<'t>, CoreError> {
        let (ins, outs): (Vec<_>, Vec<_>) = (ins.into_iter().collect(), outs.into_iter().collect());
        let rows = |r: &Rows| self.blocks.get(r.buf).ok_or(CoreError::NoBuffer(r.buf));
        // Every output's rows are apart from every other rows of the run.
        let in_rows = ins.iter().filter_map(|s| match s {
            Src::Rows(r) => Some(r),
            Src::Host { .. } => None,
        });
        let out_rows: Vec<&Rows> = outs
            .iter()
            .filter_map(|d| match d {
                Dst::Rows(r) => Some(r),
                Dst::Host { .. } => None,
            })
            .collect();
        for (i, o) in out_rows.iter().enumerate() {
            let mut others = in_rows.clone().chain(
                out_rows
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| *r),
            );
            if others.any(|r| o.overlaps(r)) {
                return Err(CoreError::Overlap);
            }
        }
        let mut vin = Vec::with_capacity(ins.len());
        for s in ins {
            vin.push(match s {
                // SAFETY: forwarded to this function's caller.
                Src::Rows(r) => TensorRef::from(unsafe { rows(&r)?.tensor(&r)? }),
                Src::Host { data, row_len } => {
                    TensorRef::from_array_view((flat_shape(data.len(), row_len)?, data))
                        .map_err(CoreError::View)?
                }
            });
        }
        let mut vout = Vec::with_capacity(outs.len());
        for d in outs {
            vout.push(match d {
                // SAFETY: forwarded to this function's caller.
                Dst::Rows(r) => unsafe { rows(&r)?.tensor(&r)? },
                Dst::Host { data, row_len } => {
                    TensorRefMut::from_array_view_mut((flat_shape(data.len(), row_len)?, data))
                        .map_err(CoreError::View)?
                }
            });
        }
        Ok(Binding {
            in_ptrs: vin.iter().map(|v| v.ptr()).collect(),
            out_ptrs: vout.iter().map(|v| v.ptr().cast_mut()).collect(),
            _ins: vin,
            _outs: vout,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The cached bindings point into the blocks: release them first.
        self.cached.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_buffers_are_aligned_and_zeroed() {
        let mut pool = Pool::new();
        for rows in [0, 1, 7, 100] {
            let id = pool.add_host(rows, &[3]);
            let b = pool.host(id);
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert_eq!(b.len(), rows * 3);
            assert!(b.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn rows_are_checked() {
        crate::runtime::init(None).expect("ONNX Runtime");
        let mut pool = Pool::new();
        let (a, b) = (pool.add_host(4, &[2]), pool.add_host(4, &[2]));
        assert!(matches!(
            pool.bind([a.rows(3, 2).into()], [b.rows(0, 2).into()]),
            Err(CoreError::OutOfBounds { .. })
        ));
        // Rows of one buffer: apart they bind, overlapping they do not.
        assert!(pool
            .bind([a.rows(0, 2).into()], [a.rows(2, 2).into()])
            .is_ok());
        assert!(matches!(
            pool.bind([a.rows(0, 2).into()], [a.rows(1, 2).into()]),
            Err(CoreError::Overlap)
        ));
        assert!(matches!(
            pool.bind([], [a.rows(0, 2).into(), a.rows(1, 1).into()]),
            Err(CoreError::Overlap)
        ));
        // Inputs may share rows.
        assert!(pool
            .bind(
                [a.rows(0, 2).into(), a.rows(1, 2).into()],
                [b.rows(0, 1).into()]
            )
            .is_ok());
        let mut out = [0f32; 3];
        assert!(matches!(
            pool.bind([a.rows(0, 1).flat().into()], [Dst::host(&mut out, 2)]),
            Err(CoreError::NotWholeRows { .. })
        ));
        assert!(!pool.is_cached(0));
        pool.cache(3, &[a.rows(0, 4)], &[b.rows(0, 4)])
            .expect("cache");
        assert!(pool.is_cached(3) && !pool.is_cached(0) && !pool.is_cached(9));
    }
}
