//! A hand-written forward and backward pass for the MLP denoiser (`difflab_models::MlpDenoiser`),
//! for training the small vector models (the 2-D toys) without autograd's bookkeeping.
//!
//! At batch 25 a training step of the 3×256 toy MLP is ~70 libtorch operations whose matrix
//! products are tiny, so recording the autograd graph and walking it back (one node, one
//! saved-tensor set and one dispatch per operation) cost more than the arithmetic. Here the
//! forward pass runs without a graph and keeps just what the backward pass reads (each layer's
//! input and pre-activation); the backward pass is the chain rule written out:
//!
//! for `y = x Wᵀ + b` with upstream gradient `g`: `∂W += gᵀ x`, `∂b += Σ_rows g`,
//! `∂x = g W` (not computed for the network's inputs); for `h = SiLU(z)`:
//! `∂z = ∂h·σ(z)·(1 + z(1 − σ(z)))`, for `h = ReLU(z)`: `∂z = ∂h·[z > 0]`; and the time
//! embedding `act(e)`, read by every layer's projection, collects the sum of their gradients.
//!
//! Each layer is one parallel region on libtorch's OpenMP team ([`omp_team`]): every thread
//! takes its own share of the output columns (of the weight-gradient rows in the backward pass)
//! and, for that share, writes the biases, runs its matrix products as single-threaded BLAS
//! calls ([`blas::gemm_block`]) and applies the activation, its derivative and the bias
//! gradients' column sums while the share is in its cache. A step of the 3×256 toy is so 11
//! regions, where one region per product and one pass per elementwise step took about 40, and
//! the elementwise work, once on the calling thread alone, is split too. Output and gradients
//! agree with autograd's to float rounding (tested): sums run in another order, and SiLU is
//! difflab's kernel (within 4 ulp). GELU networks, and any parameter or input that is not a
//! contiguous f32 CPU tensor, train through autograd.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Device, Kind, Tensor, nn, nn::Module};

use crate::blas::{self, RawMatrix, gemm_block};
use crate::cpu::{self, SUM_BLOCK, is_contiguous_cpu_f32, squares};
use crate::omp_team::{self, SyncPtr};

/// Fewest output columns per thread in a region (as [`blas::gemm`] splits small products).
const GRAIN: usize = 32;

/// The nonlinearity of the MLP's hidden layers that the hand-written pass implements (GELU
/// networks train through autograd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// The layers of an MLP denoiser, `e = linear_2(SiLU(linear_1(code)))`,
/// `h₀ = input(x)`, `h_{i+1} = act(linear_i(h_i) + time_proj_i(act(e)))`, `out = output(h_L)`.
#[derive(Clone, Debug)]
pub struct MlpLayers<'a> {
    /// The time MLP's first layer.
    pub time_1: &'a nn::Linear,
    /// The time MLP's second layer.
    pub time_2: &'a nn::Linear,
    /// The input projection.
    pub input: &'a nn::Linear,
    /// Each hidden layer's `(linear, time_proj)`.
    pub hidden: Vec<(&'a nn::Linear, &'a nn::Linear)>,
    /// The output layer.
    pub output: &'a nn::Linear,
    /// The hidden layers' nonlinearity.
    pub activation: Activation,
}

/// What [`backward`] reads from a [`forward_taped`] pass.
#[derive(Debug)]
pub struct MlpTape {
    /// The sinusoidal code `[B, S]` (input of the time MLP's first layer; one row when every
    /// example shares `t`, as are the next four).
    code: Tensor,
    /// Pre-activation of the time MLP's first layer.
    time_pre: Tensor,
    /// Its SiLU (input of the time MLP's second layer).
    time_hidden: Tensor,
    /// The time embedding `e` (the time MLP's output).
    emb: Tensor,
    /// `act(e)`, the input of every layer's time projection.
    emb_act: Tensor,
    /// `inputs[0]` is `x`; `inputs[i + 1]` the input of hidden layer `i` (`inputs[1]` the input
    /// projection's output), the last the output layer's input.
    inputs: Vec<Tensor>,
    /// The pre-activation of every hidden layer.
    pre: Vec<Tensor>,
}

/// Sums of squares of gradients that [`backward`] wrote, each taken while the
/// thread that wrote a block of it still had the block in its cache: for gradient clipping,
/// which then need not read those gradients again. Each value has the bits of the clipping
/// pass's own sum (the tensor's [`SUM_BLOCK`]-element blocks, each by [`squares`], added in
/// order). Gradients whose blocks the threads' shares do not align with are left out.
#[derive(Debug, Default)]
pub struct GradSquares(Vec<(usize, f64)>);

impl GradSquares {
    /// `Σ g²` of gradient `grad`, if the pass recorded it.
    pub fn get(&self, grad: &Tensor) -> Option<f64> {
        let address = grad.data_ptr() as usize;
        self.0
            .iter()
            .find(|(a, _)| *a == address)
            .map(|&(_, sq)| sq)
    }

    /// How many gradients have their sum recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A weight gradient's sums of squares over its [`SUM_BLOCK`]-element blocks, filled by the
/// threads of the region that writes it.
struct BlockSquares {
    grad: RawMatrix,
    /// One sum per block (written through `out`, each by the thread that owns the block).
    sums: Vec<f64>,
    out: SyncPtr<f64>,
    /// A thread's rows did not start on a block boundary: the clipping pass takes this one.
    misaligned: AtomicBool,
}

impl BlockSquares {
    fn new(grad: RawMatrix) -> Self {
        let n = (grad.rows * grad.cols) as usize;
        let mut sums = vec![0.0; n.div_ceil(SUM_BLOCK)];
        let out = SyncPtr(sums.as_mut_ptr());
        Self {
            grad,
            sums,
            out,
            misaligned: AtomicBool::new(false),
        }
    }

    /// The sums of the blocks that rows `rows` of the gradient cover, once this thread has
    /// written them.
    ///
    /// # Safety
    /// The gradient is alive, its rows `rows` are written and no thread writes them meanwhile,
    /// and the threads of a region pass disjoint rows.
    unsafe fn add_rows(&self, rows: Range<i64>) {
        if rows.is_empty() {
            return;
        }
        let start = (rows.start * self.grad.cols) as usize;
        // SAFETY: forwarded from the caller.
        match unsafe { self.grad.rows(rows) } {
            Some(x) if start.is_multiple_of(SUM_BLOCK) => {
                // SAFETY: the blocks from `start` on are this thread's alone (every share
                // starts on a block boundary, or the flag below drops the whole tensor).
                let sums = unsafe {
                    self.out
                        .slice_mut(start / SUM_BLOCK..(start + x.len()).div_ceil(SUM_BLOCK))
                };
                for (block, sum) in x.chunks(SUM_BLOCK).zip(sums) {
                    *sum = squares(block);
                }
            }
            _ => self.misaligned.store(true, Ordering::Relaxed),
        }
    }

    /// `(address, Σ g²)`, unless a share was misaligned.
    fn finish(self) -> Option<(usize, f64)> {
        (!self.misaligned.into_inner()).then(|| (self.grad.address(), self.sums.iter().sum()))
    }
}

/// One thread's share of a region: consecutive columns of every output it writes.
struct Share {
    index: usize,
    parts: usize,
}

impl Share {
    /// This thread's columns of an output `width` wide (whole 16-float vectors but the last;
    /// the shares of a region's threads are disjoint and cover `0..width`).
    fn of(&self, width: i64) -> Range<i64> {
        let r = omp_team::chunk(width as usize, 16, self.index, self.parts);
        r.start as i64..r.end as i64
    }
}

/// Run `body` once on each thread of libtorch's OpenMP team that an output of `width` columns
/// gives [`GRAIN`] columns or more (on the calling thread alone for narrow ones), with that
/// thread's [`Share`]; returns when all are done.
fn region(width: i64, body: impl Fn(&Share) + Sync) {
    let parts = omp_team::threads_for_grain(width as usize, GRAIN);
    omp_team::for_each_chunk_grain(parts, 1, 1, |threads| {
        for index in threads {
            body(&Share { index, parts });
        }
    });
}

/// The memory of a tensor that [`forward_taped`] checked or made (contiguous f32
/// on the CPU).
fn raw(t: &Tensor) -> RawMatrix {
    RawMatrix::of(t).expect("a contiguous f32 CPU tensor (checked or made by the taped pass)")
}

/// A layer's weight, bias, and their gradients.
#[derive(Clone, Copy)]
struct RawLinear {
    w: RawMatrix,
    b: Option<RawMatrix>,
    grad_w: RawMatrix,
    grad_b: Option<RawMatrix>,
}

impl RawLinear {
    /// The parameters' memory, without gradients (the forward pass); `grad_*` then alias the
    /// parameters and must not be used.
    fn params(layer: &nn::Linear) -> Self {
        let w = raw(&layer.ws);
        let b = layer.bs.as_ref().map(raw);
        Self {
            w,
            b,
            grad_w: w,
            grad_b: b,
        }
    }

    /// The parameters' and their gradients' memory (the backward pass).
    fn with_grads(layer: &nn::Linear) -> Self {
        Self {
            grad_w: raw(&layer.ws.grad()),
            grad_b: layer.bs.as_ref().map(|b| raw(&b.grad())),
            ..Self::params(layer)
        }
    }
}

/// The MLP's prediction for `x` `[B, D]` given the sinusoidal code of its timesteps `code`
/// (`[B, S]`, or `[1, S]` when every example shares `t`), as the network's forward pass
/// computes it (to float rounding), but without an autograd graph: returns the output (no
/// grad) and the tape [`backward`] needs. `None` when the hand-written pass does not apply (no
/// BLAS reachable, or parameters, their gradients, `x` or `code` not contiguous f32 on the
/// CPU); use autograd then. Run it without autocast.
pub fn forward_taped(
    layers: &MlpLayers<'_>,
    x: &Tensor,
    code: &Tensor,
) -> Option<(Tensor, MlpTape)> {
    let act = layers.activation;
    let usable = |p: &Tensor| {
        let grad = p.grad();
        is_contiguous_cpu_f32(p) && (!grad.defined() || is_contiguous_cpu_f32(&grad))
    };
    let f32_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu;
    if !blas::direct() || !f32_cpu(x) || !f32_cpu(code) || !layers.parameters().all(usable) {
        return None;
    }
    let _guard = tch::no_grad_guard();
    let code = code.contiguous();
    let x = x.contiguous();
    let (batch, time_rows) = (x.size()[0], code.size()[0]);
    let (l1, l2) = (
        RawLinear::params(layers.time_1),
        RawLinear::params(layers.time_2),
    );
    let (hidden, temb) = (layers.input.ws.size()[0], l1.w.rows);
    let (time_pre, tp) = RawMatrix::new_matrix(time_rows, temb);
    let (time_hidden, th) = RawMatrix::new_matrix(time_rows, temb);
    let (emb, e) = RawMatrix::new_matrix(time_rows, temb);
    let (emb_act, ea) = RawMatrix::new_matrix(time_rows, temb);
    let (projected, h0) = RawMatrix::new_matrix(batch, hidden);
    let c = raw(&code);
    region(temb, |share| {
        let cols = share.of(temb);
        // SAFETY: the matrices are alive for the call and shaped as the products need; each thread writes only its own columns `cols` of the outputs (rows of the weight gradients) and reads what earlier regions finished.
        unsafe {
            linear_block(tp, c, l1, cols.clone());
            activate_block(Activation::Silu, tp, th, cols);
        }
    });
    let xs = raw(&x);
    let input = RawLinear::params(layers.input);
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    region(temb.max(hidden), |share| unsafe {
        let cols = share.of(temb);
        linear_block(e, th, l2, cols.clone());
        activate_block(act, e, ea, cols);
        linear_block(h0, xs, input, share.of(hidden));
    });
    let mut inputs = vec![x, projected];
    let mut pre = Vec::with_capacity(layers.hidden.len());
    let shared = time_rows == 1 && batch != 1;
    let (_time_row, row) = RawMatrix::new_matrix(1, hidden);
    for &(linear, time_proj) in &layers.hidden {
        let (lin, proj) = (RawLinear::params(linear), RawLinear::params(time_proj));
        let (z, zm) = RawMatrix::new_matrix(batch, hidden);
        let (h_next, hm) = RawMatrix::new_matrix(batch, hidden);
        let h = raw(inputs.last().expect("the input projection"));
        // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
        // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads
        // what earlier regions finished.
        region(hidden, |share| unsafe {
            let cols = share.of(hidden);
            if shared {
                // One row of `act(e) Uᵀ + c` for the whole batch, added like a bias.
                linear_block(row, ea, proj, cols.clone());
                fill_rows(zm, &[lin.b, Some(row)], cols.clone());
            } else {
                fill_rows(zm, &[lin.b, proj.b], cols.clone());
                gemm_block(zm, ea, false, proj.w, true, true, 0..batch, cols.clone());
            }
            gemm_block(zm, h, false, lin.w, true, true, 0..batch, cols.clone());
            activate_block(act, zm, hm, cols);
        });
        inputs.push(h_next);
        pre.push(z);
    }
    let last = inputs.last().expect("the last layer");
    let out =
        blas::linear_inference(last, layers.output).unwrap_or_else(|| layers.output.forward(last));
    let tape = MlpTape {
        code,
        time_pre,
        time_hidden,
        emb,
        emb_act,
        inputs,
        pre,
    };
    Some((out, tape))
}

/// `∂loss/∂θ` into every parameter's `.grad`, given `grad_out = ∂loss/∂output` for the
/// forward pass that recorded `tape`: the same gradients `output.backward(grad_out)` would
/// accumulate through autograd (to float rounding). With `accumulate` they are added to
/// what `.grad` holds, as autograd does; without, they replace it, whatever it held (NaN
/// included), which saves the optimizer a pass writing zeros into every gradient between
/// steps (the effect of PyTorch's `zero_grad(set_to_none=True)`). Every parameter's
/// gradient is written once per call, either way. Gradients that do not exist yet are
/// created (as zeros). With `sum_squares` (for the pass that completes a step's gradients)
/// it returns the weight gradients' sums of squares for clipping ([`GradSquares`]);
/// without, nothing.
pub fn backward(
    layers: &MlpLayers<'_>,
    tape: MlpTape,
    grad_out: &Tensor,
    accumulate: bool,
    sum_squares: bool,
) -> GradSquares {
    layers.ensure_grads();
    let _guard = tch::no_grad_guard();
    let act = layers.activation;
    let MlpTape {
        code,
        time_pre,
        time_hidden,
        emb,
        emb_act,
        inputs,
        pre,
    } = tape;
    let n_layers = layers.hidden.len();
    let grad_out = grad_out.to_kind(Kind::Float).contiguous();
    let (batch, time_rows) = (grad_out.size()[0], emb_act.size()[0]);
    let (hidden, temb) = (layers.input.ws.size()[0], emb_act.size()[1]);
    let shared = time_rows == 1 && batch != 1;
    // `∂z_i` of every hidden layer, and for a shared `t` its column sums: the gradient of
    // the one row `act(e) Uᵀ + c` the whole batch read.
    let (_grad_z, gz): (Vec<Tensor>, Vec<RawMatrix>) = (0..n_layers)
        .map(|_| RawMatrix::new_matrix(batch, hidden))
        .unzip();
    let grad_time: Vec<Tensor> = (0..if shared { n_layers } else { 0 })
        .map(|_| Tensor::zeros([1, hidden], (Kind::Float, Device::Cpu)))
        .collect();
    // A layer input's gradient before the activation's derivative is applied.
    let (_upstream, up) = RawMatrix::new_matrix(batch, hidden);
    let (_grad_emb_act, gea) = RawMatrix::new_matrix(time_rows, temb);
    let (_grad_emb, ge) = RawMatrix::new_matrix(time_rows, temb);
    let (_grad_hidden, gh) = RawMatrix::new_matrix(time_rows, temb);
    let (_grad_pre, gp) = RawMatrix::new_matrix(time_rows, temb);
    let raw_layers: Vec<(RawLinear, RawLinear)> = layers
        .hidden
        .iter()
        .map(|&(linear, time_proj)| {
            (
                RawLinear::with_grads(linear),
                RawLinear::with_grads(time_proj),
            )
        })
        .collect();
    let track = |grad: RawMatrix| sum_squares.then(|| BlockSquares::new(grad));
    let layer_squares: Vec<(Option<BlockSquares>, Option<BlockSquares>)> = raw_layers
        .iter()
        .map(|(lin, proj)| (track(lin.grad_w), track(proj.grad_w)))
        .collect();
    let gt: Vec<RawMatrix> = if shared {
        grad_time.iter().map(raw).collect()
    } else {
        gz.clone()
    };
    let pre_m: Vec<RawMatrix> = pre.iter().map(raw).collect();
    // `∂z_j[:, cols] = upstream[:, cols]·act'(z_j)`, and its column sums into both biases'
    // gradients of layer `j` (through the time row for a shared `t`).
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    let finish_layer = |j: usize, cols: Range<i64>| unsafe {
        activation_grad_block(act, up, pre_m[j], gz[j], cols.clone());
        let (lin, proj) = raw_layers[j];
        bias_grad_block(accumulate, lin.grad_b, gz[j], cols.clone());
        if shared {
            add_column_sums(Some(gt[j]), gz[j], cols.clone());
            bias_grad_block(accumulate, proj.grad_b, gt[j], cols);
        } else {
            bias_grad_block(accumulate, proj.grad_b, gz[j], cols);
        }
    };

    let output = RawLinear::with_grads(layers.output);
    let g_out = raw(&grad_out);
    let h_last = raw(&inputs[n_layers + 1]);
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    unsafe { bias_grad_block(accumulate, output.grad_b, g_out, 0..output.w.rows) };
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    region(hidden, |share| unsafe {
        let cols = share.of(hidden);
        weight_grad_block(
            accumulate,
            output.grad_w,
            g_out,
            h_last,
            0..output.w.rows,
            cols.clone(),
        );
        gemm_block(
            up,
            g_out,
            false,
            output.w,
            false,
            false,
            0..batch,
            cols.clone(),
        );
        finish_layer(n_layers - 1, cols);
    });
    let ea = raw(&emb_act);
    let (xs, em) = (raw(&inputs[0]), raw(&emb));
    let input = RawLinear::with_grads(layers.input);
    let (l1, l2) = (
        RawLinear::with_grads(layers.time_1),
        RawLinear::with_grads(layers.time_2),
    );
    let (input_sq, l2_sq, l1_sq) = (track(input.grad_w), track(l2.grad_w), track(l1.grad_w));
    for i in (0..n_layers).rev() {
        let (lin, proj) = raw_layers[i];
        let h = raw(&inputs[i + 1]);
        // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
        // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads
        // what earlier regions finished.
        region(hidden.max(temb), |share| unsafe {
            let (hc, ec) = (share.of(hidden), share.of(temb));
            weight_grad_block(accumulate, lin.grad_w, gz[i], h, hc.clone(), 0..hidden);
            weight_grad_block(accumulate, proj.grad_w, gt[i], ea, hc.clone(), 0..temb);
            let (lin_sq, proj_sq) = &layer_squares[i];
            for sq in [lin_sq, proj_sq].into_iter().flatten() {
                sq.add_rows(hc.clone());
            }
            let first = i + 1 == n_layers;
            gemm_block(
                gea,
                gt[i],
                false,
                proj.w,
                false,
                !first,
                0..time_rows,
                ec.clone(),
            );
            gemm_block(up, gz[i], false, lin.w, false, false, 0..batch, hc.clone());
            if i > 0 {
                finish_layer(i - 1, hc);
            } else {
                // The input projection (no gradient for the data), and `∂e`, now that
                // every layer has added its part to `∂act(e)`.
                weight_grad_block(
                    accumulate,
                    input.grad_w,
                    up,
                    xs,
                    hc.clone(),
                    0..input.w.cols,
                );
                if let Some(sq) = &input_sq {
                    sq.add_rows(hc.clone());
                }
                bias_grad_block(accumulate, input.grad_b, up, hc);
                activation_grad_block(act, gea, em, ge, ec.clone());
                bias_grad_block(accumulate, l2.grad_b, ge, ec);
            }
        });
    }
    let (th, tp) = (raw(&time_hidden), raw(&time_pre));
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    region(temb, |share| unsafe {
        let cols = share.of(temb);
        weight_grad_block(accumulate, l2.grad_w, ge, th, cols.clone(), 0..temb);
        if let Some(sq) = &l2_sq {
            sq.add_rows(cols.clone());
        }
        gemm_block(
            gh,
            ge,
            false,
            l2.w,
            false,
            false,
            0..time_rows,
            cols.clone(),
        );
        activation_grad_block(Activation::Silu, gh, tp, gp, cols.clone());
        bias_grad_block(accumulate, l1.grad_b, gp, cols);
    });
    let c = raw(&code);
    // SAFETY: the matrices are alive for the call and shaped as the products need; each thread
    // writes only its own share `cols` of the outputs (rows of the weight gradients) and reads what
    // earlier regions finished.
    region(temb, |share| unsafe {
        let cols = share.of(temb);
        weight_grad_block(accumulate, l1.grad_w, gp, c, cols.clone(), 0..l1.w.cols);
        if let Some(sq) = &l1_sq {
            sq.add_rows(cols);
        }
    });
    let all = layer_squares
        .into_iter()
        .flat_map(|(lin, proj)| [lin, proj])
        .chain([input_sq, l2_sq, l1_sq]);
    GradSquares(all.flatten().filter_map(BlockSquares::finish).collect())
}

impl MlpLayers<'_> {
    /// Every linear layer, in parameter order.
    pub fn linears(&self) -> Vec<&nn::Linear> {
        let mut all = vec![self.time_1, self.time_2, self.input];
        for &(linear, time_proj) in &self.hidden {
            all.push(linear);
            all.push(time_proj);
        }
        all.push(self.output);
        all
    }

    /// Every parameter tensor (weights and biases), in parameter order.
    fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.linears()
            .into_iter()
            .flat_map(|l| std::iter::once(&l.ws).chain(l.bs.as_ref()))
    }

    /// Give every parameter a `.grad` (zeros) if any lacks one: tch cannot assign a gradient
    /// directly, so one autograd pass of `0·Σθ` creates them all.
    pub fn ensure_grads(&self) {
        if self.parameters().all(|p| p.grad().defined()) {
            return;
        }
        let total = self
            .parameters()
            .map(|p| p.sum(Kind::Float))
            .reduce(|a, b| a + b)
            .expect("parameters");
        (total * 0.0).backward();
    }
}

/// Columns `cols` of a linear layer's output `out = x Wᵀ + b`.
///
/// # Safety
/// As [`gemm_block`] for `out` `[B, out]`, `x` `[B, in]`, the layer's `W` `[out, in]`.
unsafe fn linear_block(out: RawMatrix, x: RawMatrix, layer: RawLinear, cols: Range<i64>) {
    // SAFETY: forwarded from the caller.
    unsafe {
        fill_rows(out, &[layer.b], cols.clone());
        gemm_block(out, x, false, layer.w, true, true, 0..out.rows, cols);
    }
}

/// Columns `cols` of every row of `out` set to the sum of the bias rows (`[1, width]` each, or
/// absent); zeros when all are absent.
///
/// # Safety
/// The matrices are alive, `cols` lies inside them, and no other thread touches these columns
/// of `out`.
unsafe fn fill_rows(out: RawMatrix, biases: &[Option<RawMatrix>], cols: Range<i64>) {
    for r in 0..out.rows {
        // SAFETY: forwarded from the caller.
        let row = unsafe { out.row_mut(r, cols.clone()) };
        row.fill(0.0);
        for bias in biases.iter().flatten() {
            // SAFETY: forwarded from the caller.
            let bias = unsafe { bias.row(0, cols.clone()) };
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
}

/// Rows `rows`, columns `cols` of a weight gradient `∂W = gᵀ x` (`g` `[B, out]`, `x` `[B, in]`),
/// added to what `grad_w` holds with `accumulate`, replacing it without.
///
/// # Safety
/// As [`gemm_block`] for that product, for the block `rows × cols` of `grad_w`.
unsafe fn weight_grad_block(
    accumulate: bool,
    grad_w: RawMatrix,
    g: RawMatrix,
    x: RawMatrix,
    rows: Range<i64>,
    cols: Range<i64>,
) {
    if !accumulate {
        // Zeros, then the accumulating product: with the block in cache this beats MKL's
        // overwriting (β = 0) call (docs/performance.md).
        for r in rows.clone() {
            // SAFETY: forwarded from the caller.
            unsafe { grad_w.row_mut(r, cols.clone()) }.fill(0.0);
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { gemm_block(grad_w, g, true, x, false, true, rows, cols) }
}

/// Columns `cols` of a bias gradient `into` (`[1, width]`, if present) `+= Σ_rows g[:, cols]`
/// with `accumulate`, `= Σ_rows g[:, cols]` without.
///
/// # Safety
/// As [`fill_rows`], for the columns `cols` of `into`.
unsafe fn bias_grad_block(
    accumulate: bool,
    into: Option<RawMatrix>,
    g: RawMatrix,
    cols: Range<i64>,
) {
    if let (Some(into), false) = (into, accumulate) {
        // SAFETY: forwarded from the caller.
        unsafe { into.row_mut(0, cols.clone()) }.fill(0.0);
    }
    // SAFETY: forwarded from the caller.
    unsafe { add_column_sums(into, g, cols) }
}

/// `into[cols] += Σ_rows g[:, cols]` for a bias gradient `into` (`[1, width]`), if present.
///
/// # Safety
/// As [`fill_rows`], for the columns `cols` of `into`.
unsafe fn add_column_sums(into: Option<RawMatrix>, g: RawMatrix, cols: Range<i64>) {
    let Some(into) = into else { return };
    // SAFETY: forwarded from the caller.
    let sums = unsafe { into.row_mut(0, cols.clone()) };
    for r in 0..g.rows {
        // SAFETY: forwarded from the caller.
        let row = unsafe { g.row(r, cols.clone()) };
        sums.iter_mut().zip(row).for_each(|(s, x)| *s += x);
    }
}

/// Columns `cols` of `h = act(z)` (SiLU through difflab's kernel, ReLU).
///
/// # Safety
/// As [`fill_rows`], for `z` (read) and `h` (written), which do not overlap.
unsafe fn activate_block(act: Activation, z: RawMatrix, h: RawMatrix, cols: Range<i64>) {
    for r in 0..z.rows {
        // SAFETY: forwarded from the caller.
        let (z, h) = unsafe { (z.row(r, cols.clone()), h.row_mut(r, cols.clone())) };
        match act {
            // SAFETY: two slices of the same length.
            Activation::Silu => unsafe { cpu::silu_serial(h.as_mut_ptr(), z.as_ptr(), z.len()) },
            // `max(z, 0)`, keeping NaN (as libtorch's `relu`).
            Activation::Relu => h
                .iter_mut()
                .zip(z)
                .for_each(|(h, &z)| *h = if z < 0.0 { 0.0 } else { z }),
        }
    }
}

/// Columns `cols` of `∂z = ∂h·act'(z)`.
///
/// # Safety
/// As [`fill_rows`], for `grad_h` and `z` (read) and `grad_z` (written), which does not overlap
/// them.
unsafe fn activation_grad_block(
    act: Activation,
    grad_h: RawMatrix,
    z: RawMatrix,
    grad_z: RawMatrix,
    cols: Range<i64>,
) {
    for r in 0..z.rows {
        // SAFETY: forwarded from the caller.
        let (g, z, out) = unsafe {
            (
                grad_h.row(r, cols.clone()),
                z.row(r, cols.clone()),
                grad_z.row_mut(r, cols.clone()),
            )
        };
        match act {
            Activation::Silu => cpu::silu_backward_serial(out, g, z),
            // `∂h·[z > 0]` as libtorch's `threshold_backward` writes it.
            Activation::Relu => out
                .iter_mut()
                .zip(g.iter().zip(z))
                .for_each(|(o, (&g, &z))| *o = if z > 0.0 { g } else { 0.0 }),
        }
    }
}
