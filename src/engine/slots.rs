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

use std::ffi::{c_char, CStr, CString};

use ort::session::Session;
use ort::value::TensorRefMut;
use ort::AsPointer;

use crate::error::Error;

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
        let mut shape = Vec::with_capacity(1 + dims.len());
        shape.push(rows);
        shape.extend_from_slice(dims);
        TensorRefMut::from_array_view_mut((shape, slice))
            .map_err(|e| Error::internal(format!("tensor view: {e}")))
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
    let api = ort::api();
    // SAFETY: the session pointer is live for the call (`&mut` keeps `Run` single-threaded, as the
    // `ort` crate does); names and values are valid, match in number, and the outputs are
    // preallocated tensors of the shapes the graph produces.
    unsafe {
        let status = (api.Run)(
            session.ptr().cast_mut(),
            std::ptr::null(),
            in_names.ptrs.as_ptr(),
            views.ins.as_ptr(),
            views.ins.len(),
            out_names.ptrs.as_ptr(),
            out_names.ptrs.len(),
            views.outs.as_mut_ptr(),
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
}

struct State {
    dims: Vec<usize>,
    len: usize,
    initial: f32,
    /// `bufs[side]` is read by the step when `side == cur`, written when not.
    bufs: [Buf; 2],
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
    features: Buf,
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
}

impl Slots {
    pub fn new(spec: SlotSpec<'_>) -> Result<Slots, Error> {
        let cap = spec.max_batch.max(1);
        let input_len = spec.input_dims.iter().product::<usize>();
        let feature_len = spec.feature_dims.iter().product::<usize>();
        let states = spec
            .states
            .iter()
            .map(|(dims, initial)| {
                let len = dims.iter().product::<usize>();
                State {
                    dims: dims.to_vec(),
                    len,
                    initial: *initial,
                    bufs: [Buf::new(cap * len), Buf::new(cap * len)],
                }
            })
            .collect();
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
            features: Buf::new(cap * feature_len),
            logits: Buf::new(cap * spec.classes),
            states,
            cur: 0,
            step_in: Names::new(&spec.step_inputs)?,
            step_out: Names::new(&spec.step_outputs)?,
            encoder_names,
            step_views: (0..2 * cap).map(|_| None).collect(),
            rows_moved: 0,
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
        for (i, x) in images.iter().enumerate() {
            if x.len() != self.input_len {
                return Err(Error::internal(format!(
                    "input of {} values, the model takes {}",
                    x.len(),
                    self.input_len
                )));
            }
            let dst = if encoder.is_some() {
                &mut self.images.as_mut_slice()[i * self.input_len..(i + 1) * self.input_len]
            } else {
                let fl = self.feature_len;
                &mut self.features.as_mut_slice()[(first + i) * fl..(first + i + 1) * fl]
            };
            dst.copy_from_slice(x);
        }
        if let (Some(session), true) = (encoder, encode) {
            self.encode_rows(session, first, m)?;
        }
        for st in &mut self.states {
            let (a, b) = (first * st.len, (first + m) * st.len);
            st.bufs[self.cur].as_mut_slice()[a..b].fill(st.initial);
        }
        self.n += m;
        Ok(())
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
            let fl = self.feature_len;
            self.features
                .as_mut_slice()
                .copy_within(last * fl..(last + 1) * fl, i * fl);
            for st in &mut self.states {
                let l = st.len;
                st.bufs[self.cur]
                    .as_mut_slice()
                    .copy_within(last * l..(last + 1) * l, i * l);
            }
            self.rows_moved += 1;
        }
        self.n = last;
    }

    /// One `step.onnx` run over rows `0..n`: features and the current membranes in, the logits and
    /// the next membranes out (into the other side of each pair), then the sides swap.
    pub fn step(&mut self, session: &mut Session) -> Result<(), Error> {
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

    /// Row `i`'s current membranes of state `s` (tests).
    pub fn membrane(&self, s: usize, i: usize) -> &[f32] {
        let st = &self.states[s];
        &st.bufs[self.cur].as_slice()[i * st.len..(i + 1) * st.len]
    }

    /// Row `i`'s features (tests).
    pub fn features(&self, i: usize) -> &[f32] {
        let fl = self.feature_len;
        &self.features.as_slice()[i * fl..(i + 1) * fl]
    }

    /// The `copy-membranes` ablation: what rebuilding the batch after every step costs, i.e. every
    /// active row of every state copied into a freshly allocated buffer and back.
    pub fn copy_membranes(&mut self) {
        let n = self.n;
        for st in &mut self.states {
            let rows = &mut st.bufs[self.cur].as_mut_slice()[..n * st.len];
            let fresh = rows.to_vec();
            rows.copy_from_slice(&fresh);
        }
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

    /// A model without an encoder: features are the images, two states of 3 and 2 values.
    fn slots(cap: usize) -> Slots {
        Slots::new(SlotSpec {
            max_batch: cap,
            input_dims: &[1, 2],
            feature_dims: &[1, 2],
            classes: 3,
            states: vec![(&[3][..], 0.5), (&[2][..], -1.0)],
            step_inputs: vec!["x", "s0", "s1"],
            step_outputs: vec!["logits", "s0o", "s1o"],
            encoder: None,
        })
        .expect("slots")
    }

    #[test]
    fn buffers_are_aligned() {
        for len in [1, 7, 100] {
            let b = Buf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(b.as_slice().len(), len);
        }
    }

    #[test]
    fn newcomers_fill_free_rows_and_leavers_are_replaced_by_the_last_row() {
        let mut s = slots(4);
        let imgs: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32, 10.0 + i as f32]).collect();
        let refs: Vec<&[f32]> = imgs.iter().take(3).map(|v| v.as_slice()).collect();
        s.admit(&refs, None, true).expect("admit");
        assert_eq!(s.len(), 3);
        assert_eq!(s.membrane(0, 2), &[0.5, 0.5, 0.5]);
        assert_eq!(s.membrane(1, 1), &[-1.0, -1.0]);
        // Mark each row's membranes so that moves are visible.
        for i in 0..3 {
            let st = &mut s.states[0];
            st.bufs[s.cur].as_mut_slice()[i * 3..(i + 1) * 3].fill(i as f32);
        }
        // Row 0 leaves: row 2 moves into it, one row copied.
        s.swap_remove(0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.features(0), &[2.0, 12.0]);
        assert_eq!(s.membrane(0, 0), &[2.0, 2.0, 2.0]);
        assert_eq!(s.features(1), &[1.0, 11.0]);
        assert_eq!(s.rows_moved, 1);
        // The last row leaves: nothing moves.
        s.swap_remove(1);
        assert_eq!(s.rows_moved, 1);
        assert_eq!(s.len(), 1);
        // A newcomer takes row 1 with fresh membranes; the survivor keeps its own.
        s.admit(&[&imgs[3]], None, true).expect("admit");
        assert_eq!(s.features(1), &[3.0, 13.0]);
        assert_eq!(s.membrane(0, 1), &[0.5, 0.5, 0.5]);
        assert_eq!(s.membrane(0, 0), &[2.0, 2.0, 2.0]);
        // More newcomers than free rows: refused, nothing added.
        let three: Vec<&[f32]> = imgs.iter().take(3).map(|v| v.as_slice()).collect();
        assert!(s.admit(&three, None, true).is_err());
        assert_eq!(s.len(), 2);
        // A wrong input size is refused.
        assert!(s.admit(&[&[1.0][..]], None, true).is_err());
        s.clear();
        assert!(s.is_empty());
    }
}
