//! The GEMM family's kernel calls: [`Gemm`], one call of a matmul.wgsl
//! entry point (`c[m, n] = epilogue(A[m, k] B[k, n])`), built by one
//! constructor per CPU twin, with operands ([`Operand`]) that are either
//! matrices in buffers (strides say which is transposed) or the resident
//! dataset, gathered and preprocessed inside the kernel ([`DataSource`]);
//! and its [`Dispatch`], with the tile variant chosen for its shape.
//!
//! matmul.wgsl is compiled without wgpu's runtime bounds checks, so every
//! buffer a dispatch binds is checked here against the shapes first.

use super::context::GpuContext;
use super::dispatch::{fold, need_u32, Dispatch};
use super::registry::{GemmKernel, Kernel};
use super::tile::Tile;
use super::uniforms::{GemmParams, FLAG_BIAS, FLAG_DROPOUT, FLAG_GRAD, FLAG_RELU, STAT_BYTES};
use crate::backend::Precision;
use crate::cpu::kernels::Smoothing;
use crate::error::GpuError;
use crate::optim::draw::{Dropout, Shift};

/// Where a GEMM operand's values come from.
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    /// A matrix in `buf`: element `(r, c)` of the operand at
    /// `buf[r * rs + c * cs]`.
    Dense { buf: &'a wgpu::Buffer, rs: u32, cs: u32 },
    /// The resident dataset, gathered and preprocessed on the fly; rows are
    /// batch positions and columns features.
    Data(DataSource<'a>),
}

/// A dataset resident on the GPU, as a GEMM operand sees it.
#[derive(Clone, Copy)]
pub(crate) struct DataSource<'a> {
    /// Raw values, as f32 or as bytes packed four to a u32 word.
    pub data: &'a wgpu::Buffer,
    pub is_u8: bool,
    /// Example numbers, read at `index_off + row` when `gather`.
    pub index: &'a wgpu::Buffer,
    pub gather: bool,
    /// Values per example.
    pub dim: u32,
    pub scale: f32,
    pub offset: f32,
    /// Translate each row's image, keyed by the run's seed (training only).
    pub shift: Option<(Shift, u64)>,
}

/// Dropout in a training step's linear_forward (after the ReLU) or
/// backprop_input (the scale on the kept units' gradients).
#[derive(Clone, Copy)]
pub(crate) struct LayerDropout {
    pub drop: Dropout,
    /// The run's seed and the layer's stream (`optim::draw`).
    pub seed: u64,
    pub stream: u32,
}

impl<'a> Operand<'a> {
    /// Row-major `[rows, cols]` in `buf`.
    pub(crate) fn rows(buf: &'a wgpu::Buffer, cols: usize) -> Self {
        Operand::Dense {
            buf,
            rs: cols as u32,
            cs: 1,
        }
    }

    /// The transpose of row-major `[cols, rows]` in `buf`.
    pub(crate) fn transposed(buf: &'a wgpu::Buffer, rows: usize) -> Self {
        Operand::Dense {
            buf,
            rs: 1,
            cs: rows as u32,
        }
    }
}

/// The loss linear_softmax_xent computes in its epilogue: softmax_xent's
/// (src/gpu/softmax.rs), whose buffers it binds.
#[derive(Clone, Copy)]
pub(crate) struct XentLoss<'a> {
    /// The split's labels, one per example.
    pub labels: &'a wgpu::Buffer,
    /// Example numbers, read at `index_off + row` when `gather` (the
    /// epoch's permutation), as the dataset operand reads them.
    pub index: &'a wgpu::Buffer,
    pub gather: bool,
    /// `[rows, classes]`: the gradient of the mean loss over `of_rows` rows.
    pub dlogits: &'a wgpu::Buffer,
    /// The stats buffer: `stat_stride` entries per step slot, each row
    /// block's partial loss and correct count, then zeros.
    pub stats: &'a wgpu::Buffer,
    pub stat_stride: usize,
    /// The rows of the whole batch (more than `rows` for a data-parallel
    /// shard).
    pub of_rows: usize,
    /// Label smoothing (0: none).
    pub smoothing: f32,
}

/// One GEMM-family kernel call: `c[m, n] = epilogue(A[m, k] B[k, n])`.
pub(crate) struct Gemm<'a> {
    pub kernel: GemmKernel,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand<'a>,
    pub b: Operand<'a>,
    /// Row-major `[m, n]`.
    pub c: &'a wgpu::Buffer,
    /// The bias (linear_forward) or the layer input laid out like `c`
    /// (backprop_input).
    pub aux: Option<&'a wgpu::Buffer>,
    /// linear_forward: apply ReLU.
    pub relu: bool,
    /// weight_update: also update this bias with the column sums of `A`.
    pub bias: Option<&'a wgpu::Buffer>,
    /// weight_update: store the gradient in `c` (and `bias`) instead of
    /// subtracting `lr` times it (FLAG_GRAD).
    pub grad: bool,
    /// linear_forward, backprop_input: dropout (FLAG_DROPOUT).
    pub dropout: Option<LayerDropout>,
    /// How the product rounds its operands (the f16-mixed modules round
    /// every loaded value and the ReLU mask's input to f16).
    pub precision: Precision,
    /// linear_softmax_xent: the loss in the epilogue.
    pub xent: Option<XentLoss<'a>>,
}

impl<'a> Gemm<'a> {
    /// A plain product for `matmul_nn`, `matmul_nt` or `matmul_tn`:
    /// `c[m, n] = op(a) op(b)` with `a` stored `[m, k]` (`[k, m]` for tn)
    /// and `b` stored `[k, n]` (`[n, k]` for nt).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plain(
        kernel: GemmKernel,
        a: &'a wgpu::Buffer,
        b: &'a wgpu::Buffer,
        c: &'a wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
    ) -> Self {
        let (a, b) = match kernel {
            GemmKernel::MatmulNt => (Operand::rows(a, k), Operand::transposed(b, k)),
            GemmKernel::MatmulTn => (Operand::transposed(a, m), Operand::rows(b, n)),
            _ => (Operand::rows(a, k), Operand::rows(b, n)),
        };
        Gemm {
            kernel,
            m,
            n,
            k,
            a,
            b,
            c,
            aux: None,
            relu: false,
            bias: None,
            grad: false,
            dropout: None,
            precision: Precision::F32,
            xent: None,
        }
    }

    /// `y[rows, outputs] = x[rows, inputs] w[outputs, inputs]^T + bias`, ReLU when `relu`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_forward(
        x: Operand<'a>,
        w: &'a wgpu::Buffer,
        bias: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
        rows: usize,
        inputs: usize,
        outputs: usize,
        relu: bool,
    ) -> Self {
        Gemm {
            kernel: GemmKernel::LinearForward,
            m: rows,
            n: outputs,
            k: inputs,
            a: x,
            b: Operand::transposed(w, inputs),
            c: y,
            aux: Some(bias),
            relu,
            bias: None,
            grad: false,
            dropout: None,
            precision: Precision::F32,
            xent: None,
        }
    }

    /// The last layer's forward pass and the training loss in one kernel:
    /// `logits[rows, classes] = x[rows, inputs] w[classes, inputs]^T + bias`
    /// (as [`Gemm::linear_forward`] without ReLU), then softmax_xent of those
    /// logits into `loss`'s buffers: the contract of the CPU twin
    /// [`crate::cpu::kernels::linear_softmax_xent`]. `x` is a hidden layer's
    /// output in a buffer (binding 5 holds the labels, so the dataset
    /// cannot be the input).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_softmax_xent(
        x: &'a wgpu::Buffer,
        w: &'a wgpu::Buffer,
        bias: &'a wgpu::Buffer,
        logits: &'a wgpu::Buffer,
        rows: usize,
        inputs: usize,
        classes: usize,
        loss: XentLoss<'a>,
    ) -> Self {
        Gemm {
            kernel: GemmKernel::LinearSoftmaxXent,
            xent: Some(loss),
            ..Self::linear_forward(Operand::rows(x, inputs), w, bias, logits, rows, inputs, classes, false)
        }
    }

    /// `dx[rows, inputs] = (dy[rows, outputs] w[outputs, inputs]) * (x > 0)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backprop_input(
        dy: &'a wgpu::Buffer,
        w: &'a wgpu::Buffer,
        x: &'a wgpu::Buffer,
        dx: &'a wgpu::Buffer,
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Gemm {
            kernel: GemmKernel::BackpropInput,
            m: rows,
            n: inputs,
            k: outputs,
            a: Operand::rows(dy, outputs),
            b: Operand::rows(w, inputs),
            c: dx,
            aux: Some(x),
            relu: false,
            bias: None,
            grad: false,
            dropout: None,
            precision: Precision::F32,
            xent: None,
        }
    }

    /// `w[outputs, inputs] -= lr * dy[rows, outputs]^T x[rows, inputs]`;
    /// with `bias`, also `bias[outputs] -= lr * colsum(dy)` (bias_update
    /// fused in): the contract of the CPU twin
    /// [`crate::cpu::kernels::weight_update`]. A pruning mask is applied
    /// after it, by its own dispatch (`apply_mask`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weight_update(
        w: &'a wgpu::Buffer,
        bias: Option<&'a wgpu::Buffer>,
        dy: &'a wgpu::Buffer,
        x: Operand<'a>,
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Gemm {
            kernel: GemmKernel::WeightUpdate,
            m: outputs,
            n: inputs,
            k: rows,
            a: Operand::transposed(dy, outputs),
            b: x,
            c: w,
            aux: None,
            relu: false,
            bias,
            grad: false,
            dropout: None,
            precision: Precision::F32,
            xent: None,
        }
    }

    /// The gradient of an unfused optimizer, in the weight_update kernel
    /// with FLAG_GRAD: `gw[outputs, inputs] = dy[rows, outputs]^T x[rows, inputs]`
    /// and `gb[outputs] = colsum(dy)`, the CPU backend's `matmul_tn` and
    /// `column_sums`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weight_gradient(
        gw: &'a wgpu::Buffer,
        gb: &'a wgpu::Buffer,
        dy: &'a wgpu::Buffer,
        x: Operand<'a>,
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Gemm {
            grad: true,
            ..Self::weight_update(gw, Some(gb), dy, x, rows, inputs, outputs)
        }
    }
}

impl<'a> Gemm<'a> {
    /// The same call at `precision`.
    pub(crate) fn with_precision(self, precision: Precision) -> Self {
        Gemm { precision, ..self }
    }

    /// The same call with `dropout` (linear_forward and backprop_input of a
    /// training step).
    pub(crate) fn with_dropout(self, dropout: Option<LayerDropout>) -> Self {
        Gemm { dropout, ..self }
    }

    /// The dispatch reading its per-step values from `step`, with the tile
    /// variant chosen for its shape.
    pub(crate) fn dispatch(&self, ctx: &GpuContext, label: &str, step: &wgpu::Buffer) -> Result<Dispatch, GpuError> {
        let n_ext = (self.n + self.bias.is_some() as usize) as u64;
        let mut tile = Tile::choose(self.m as u64, n_ext, self.k as u64, ctx.is_software());
        if self.kernel == GemmKernel::LinearSoftmaxXent {
            // A workgroup must hold whole rows of logits.
            tile = tile.covering(n_ext).ok_or_else(|| {
                GpuError::InvalidArgument(format!(
                    "{label}: linear_softmax_xent over {} classes, more than the widest tile's {}",
                    self.n,
                    Tile::widest()
                ))
            })?;
        }
        self.dispatch_with_tile(ctx, label, step, tile)
    }

    /// [`Gemm::dispatch`] with the tile variant `tile`.
    pub(crate) fn dispatch_with_tile(
        &self,
        ctx: &GpuContext,
        label: &str,
        step: &wgpu::Buffer,
        tile: Tile,
    ) -> Result<Dispatch, GpuError> {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        // Indices are u32 in the shader.
        for (what, v) in [("m*k", m * k), ("k*n", k * n), ("m*n", m * n)] {
            need_u32(&format!("{label}: {what} elements"), v)?;
        }
        self.check_buffers(label)?;
        // With a fused bias, B has an extra column of ones (see matmul.wgsl).
        let n_ext = n + self.bias.is_some() as u64;
        let (tiles, tiles_n) = tile.grid(m, n_ext);
        let groups = fold(&ctx.dev, label, tiles)?;
        let mut p = GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            tiles_n: tiles_n.max(1) as u32,
            n_ext: n_ext as u32,
            ldc: n as u32,
            flags: if self.relu { FLAG_RELU } else { 0 }
                | if self.bias.is_some() { FLAG_BIAS } else { 0 }
                | if self.grad { FLAG_GRAD } else { 0 },
            scale: 1.0,
            ..Default::default()
        };
        if let Some(d) = self.dropout {
            if !matches!(self.kernel, GemmKernel::LinearForward | GemmKernel::BackpropInput) {
                return Err(GpuError::InvalidArgument(format!(
                    "{label}: dropout in {}",
                    self.kernel.name()
                )));
            }
            p.flags |= FLAG_DROPOUT;
            (p.seed_lo, p.seed_hi) = (d.seed as u32, (d.seed >> 32) as u32);
            (p.drop_threshold, p.drop_scale, p.drop_stream) = (d.drop.threshold, d.drop.scale, d.stream);
        }
        let xent = self.loss_params(label, tile, tiles, &mut p)?;
        let unused_ro = &ctx.registry.unused_ro;
        let a = operand(&self.a, unused_ro, &mut p.a_rs, &mut p.a_cs, &mut p.a_src);
        let b = operand(&self.b, unused_ro, &mut p.b_rs, &mut p.b_cs, &mut p.b_src);
        let (mut data, mut index) = (unused_ro, unused_ro);
        // At most one operand is the dataset in every kernel built here.
        if let Some(d) = self.a.data().or(self.b.data()) {
            p.dim = d.dim;
            p.gather = d.gather as u32;
            p.scale = d.scale;
            p.offset = d.offset;
            if let Some((shift, seed)) = d.shift {
                let plane = u64::from(shift.height) * u64::from(shift.width);
                if plane == 0 || !u64::from(d.dim).is_multiple_of(plane) {
                    return Err(GpuError::InvalidArgument(format!(
                        "{label}: a {} x {} image shift on examples of {} values",
                        shift.height, shift.width, d.dim
                    )));
                }
                (p.seed_lo, p.seed_hi) = (seed as u32, (seed >> 32) as u32);
                (p.shift, p.img_h, p.img_w) = (shift.max, shift.height, shift.width);
            }
            data = d.data;
            index = d.index;
        }
        // linear_softmax_xent binds the labels where the dataset would be
        // (its input never is the dataset), its dlogits where
        // weight_update's bias is, and its stats.
        let mut buffers = vec![
            (2, a),
            (3, b),
            (4, self.aux.unwrap_or(unused_ro)),
            (5, xent.map_or(data, |x| x.labels)),
            (6, xent.map_or(index, |x| x.index)),
            (7, self.c),
            (
                8,
                xent.map(|x| x.dlogits).or(self.bias).unwrap_or(&ctx.registry.unused_rw),
            ),
        ];
        buffers.extend(xent.map(|x| (9, x.stats)));
        Dispatch::new(
            ctx,
            Kernel::Gemm(self.kernel, tile, self.precision),
            label,
            bytemuck::bytes_of(&p),
            Some(step),
            &buffers,
            groups,
        )
    }

    /// linear_softmax_xent's loss, checked against the call (a tile as wide
    /// as the classes, no dataset operand, no ReLU or dropout, a stats
    /// entry per row block) with its scalars written into `p`; `None` for
    /// the other kernels.
    fn loss_params(
        &self,
        label: &str,
        tile: Tile,
        tiles: u64,
        p: &mut GemmParams,
    ) -> Result<Option<XentLoss<'a>>, GpuError> {
        let fused = self.kernel == GemmKernel::LinearSoftmaxXent;
        let x = match (fused, self.xent) {
            (false, None) => return Ok(None),
            (true, Some(x)) => x,
            _ => {
                return Err(GpuError::Other(format!(
                    "{label}: {} with{} a loss",
                    self.kernel.name(),
                    if fused { "out" } else { "" }
                )))
            }
        };
        let refuse = |why: String| Err(GpuError::InvalidArgument(format!("{label}: linear_softmax_xent {why}")));
        if u64::from(tile.size()) < self.n as u64 {
            return refuse(format!(
                "over {} classes in {} tiles, {} wide: a workgroup must hold whole rows",
                self.n,
                tile.name(),
                tile.size()
            ));
        }
        if self.a.data().is_some() || self.b.data().is_some() {
            return refuse("on the dataset: its binding holds the labels".into());
        }
        if self.relu || self.dropout.is_some() {
            return refuse("with ReLU or dropout on the logits".into());
        }
        if (x.stat_stride as u64) < tiles {
            return refuse(format!(
                "with {} stats entries a step for {tiles} row blocks",
                x.stat_stride
            ));
        }
        need_u32(&format!("{label}: stats entries per step"), x.stat_stride as u64)?;
        if x.stats.size() < STAT_BYTES * x.stat_stride as u64 {
            return refuse(format!(
                "with a stats buffer of {} bytes, less than a step's {} entries",
                x.stats.size(),
                x.stat_stride
            ));
        }
        let (m, n) = (self.m as u64, self.n as u64);
        check_matrix(label, "dlogits", x.dlogits, m, n, n, 1)?;
        let sm = Smoothing::new(x.smoothing, x.of_rows, self.n);
        p.gather = x.gather as u32;
        p.stat_stride = x.stat_stride as u32;
        p.inv_rows = 1.0 / x.of_rows.max(1) as f32;
        (p.smoothing, p.keep, p.per_class, p.d_label, p.d_class) =
            (sm.s, sm.keep, sm.per_class, sm.d_label, sm.d_class);
        Ok(Some(x))
    }

    /// Check that every buffer holds what the shapes say the kernel reads
    /// or writes: the shader does not check its accesses.
    fn check_buffers(&self, label: &str) -> Result<(), GpuError> {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        if let Operand::Dense { buf, rs, cs } = self.a {
            check_matrix(label, "A", buf, m, k, rs.into(), cs.into())?;
        }
        if let Operand::Dense { buf, rs, cs } = self.b {
            check_matrix(label, "B", buf, k, n, rs.into(), cs.into())?;
        }
        check_matrix(label, "C", self.c, m, n, n, 1)?;
        if let Some(aux) = self.aux {
            match self.kernel {
                GemmKernel::LinearForward | GemmKernel::LinearSoftmaxXent => {
                    check_matrix(label, "the bias", aux, 1, n, n, 1)?
                }
                _ => check_matrix(label, "the layer input", aux, m, n, n, 1)?,
            }
        }
        if let Some(bias) = self.bias {
            check_matrix(label, "the bias", bias, m, 1, 1, 1)?;
        }
        Ok(())
    }
}

impl<'a> Operand<'a> {
    fn data(&self) -> Option<DataSource<'a>> {
        match *self {
            Operand::Data(d) => Some(d),
            Operand::Dense { .. } => None,
        }
    }
}

/// The buffer to bind for an operand, with its strides and source kind
/// written into the params.
fn operand<'b>(
    op: &Operand<'b>,
    unused: &'b wgpu::Buffer,
    rs: &mut u32,
    cs: &mut u32,
    src: &mut u32,
) -> &'b wgpu::Buffer {
    match *op {
        Operand::Dense { buf, rs: r, cs: c } => {
            (*rs, *cs, *src) = (r, c, 0);
            buf
        }
        Operand::Data(d) => {
            *src = if d.is_u8 { 2 } else { 1 };
            unused
        }
    }
}

/// Fail unless `buf` holds every f32 of a `rows` x `cols` matrix whose
/// element `(r, c)` is at `r * rs + c * cs`.
fn check_matrix(
    label: &str,
    what: &str,
    buf: &wgpu::Buffer,
    rows: u64,
    cols: u64,
    rs: u64,
    cs: u64,
) -> Result<(), GpuError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let needed = 4 * ((rows - 1) * rs + (cols - 1) * cs + 1);
    if buf.size() < needed {
        return Err(GpuError::InvalidArgument(format!(
            "{label}: {what} is {} bytes but a {rows} x {cols} operand needs {needed}",
            buf.size()
        )));
    }
    Ok(())
}
