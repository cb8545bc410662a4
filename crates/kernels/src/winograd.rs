//! 3×3 stride-1 convolutions of one image by Winograd's minimal filtering `F(2×2, 3×3)`
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 2×2 block of output comes from the 4×4 input tile under it:
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`, summed over input channels, with
//!
//! ```text
//!        [1  0 -1  0]        [1    0    0 ]
//!   Bᵀ = [0  1  1  0]    G = [1/2  1/2  1/2]    Aᵀ = [1  1  1  0]
//!        [0 -1  1  0]        [1/2 -1/2  1/2]         [0  1 -1 -1]
//!        [0  1  0 -1]        [0    0    1 ]
//! ```
//!
//! (cross-correlation, as deep-learning convolutions are). The sum over channels of the
//! element-wise products is, for each of the 16 tile positions `ξ`, one matrix product
//! `M_ξ = U_ξ · V_ξ` of the transformed weights `U_ξ` `[C_out, C_in]` with the transformed
//! input tiles `V_ξ` `[C_in, tiles]`: 16 products of 16/36 = 4/9 of the direct convolution's
//! multiplications in all, and the transformed input is 16/9 smaller than im2col's columns.
//! The transforms use only additions and halvings, so the result is as accurate as a direct
//! convolution's (tested against libtorch's).
//!
//! The work is split by rows of tiles over libtorch's OpenMP team ([`crate::omp_team`]): each
//! thread transforms the input under a band of its tiles, runs the 16 products for them and
//! writes their output rows, band after band (sized so that each stage finds the previous
//! one's output in cache), so no thread waits for another. With AVX-512 a row of up to 16
//! tiles is one vector in both transforms and the products run in a register-blocked kernel;
//! elsewhere portable loops and the BLAS (one thread per call inside the region) do the same
//! work, and [`crate::conv::Conv2d`] does not pick this path.
//!
//! Where it pays off ([`WinogradF2::pays_off`], set from `cargo bench -p difflab-lab --bench
//! kernels -- conv`; the figures are in docs/performance.md): batch-1 inference at 8–128 px
//! with up to [`MAX_CHANNELS`] channels in and out, where it beats both libtorch's oneDNN
//! convolution and difflab's im2col. At 8 px (at most [`CHANNEL_SPLIT_MAX_TILES`] tiles) the
//! threads split the output channels instead of the tiles, each transforming the whole
//! (small) input itself.

use std::ops::Range;

use tch::{Kind, Tensor};

use crate::blas;
use crate::omp_team::{self, SyncPtr};

/// Positions in a 4×4 tile: the number of matrix products per convolution.
pub const TILE_POSITIONS: usize = 16;

/// Fewest tiles per row for which [`WinogradF2::pays_off`] (a vector holds 16 tiles).
pub const MIN_TILES_PER_ROW: usize = 4;

/// Fewest input channels for which [`WinogradF2::pays_off`] (the products' inner size: with
/// fewer, as in a UNet's first convolution, im2col is faster).
pub const MIN_INPUT_CHANNELS: usize = 16;

/// Most tiles for which each thread takes a share of the output channels (every tile, its own
/// copy of the transformed input) rather than a share of the tiles: at 8×8 outputs, 16 tiles,
/// a share of the tiles would give the products 8 columns.
pub const CHANNEL_SPLIT_MAX_TILES: usize = 32;

/// Transformed input plus products (bytes) a thread works on at a time (see
/// `WinogradF2::band_rows`): half of a 1 MiB second-level cache.
pub const BAND_BYTES: usize = 512 << 10;

/// Most input plus output channels for which [`WinogradF2::pays_off`]: above it the
/// transformed weights, 16·C_out·C_in floats re-read per band, no longer stay in cache, and the
/// path stops reliably beating libtorch.
pub const MAX_CHANNELS: usize = 192;

/// The transformed weights `U = G g Gᵀ` of a `[C_out, C_in, 3, 3]` weight, as `[16, C_out,
/// C_in]` (position `ξ = 4i + j` of the 4×4 tile first), contiguous f32 on the weight's device.
///
/// # Panics
/// When `weight` is not `[C_out, C_in, 3, 3]`.
pub fn transform_weight(weight: &Tensor) -> Tensor {
    let size = weight.size();
    assert!(
        size.len() == 4 && size[2] == 3 && size[3] == 3,
        "Winograd F(2x2, 3x3) takes a [out, in, 3, 3] weight, not {size:?}"
    );
    let g = Tensor::from_slice(&[
        1.0_f32, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0,
    ])
    .view([4, 3])
    .to_device(weight.device());
    let _guard = tch::no_grad_guard();
    // [out, in, 4, 3] then [out, in, 4, 4].
    let u = g.matmul(&weight.to_kind(Kind::Float)).matmul(&g.tr());
    u.permute([2, 3, 0, 1])
        .contiguous()
        .view([16, size[0], size[1]])
}

/// Whether this CPU runs the vectorised kernels (AVX-512F); elsewhere [`WinogradF2::run`] uses
/// portable loops and the BLAS, correct but not faster than libtorch.
pub fn fast_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// Set by tests on the calling thread to run the portable loops where AVX-512 exists.
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with [`WinogradF2::run`] on the portable loops and the BLAS, whatever the CPU has
/// (for tests comparing both implementations).
pub fn with_portable_kernels<T>(f: impl FnOnce() -> T) -> T {
    PORTABLE_ONLY.with(|flag| flag.set(true));
    let result = f();
    PORTABLE_ONLY.with(|flag| flag.set(false));
    result
}

/// The geometry of one `F(2×2, 3×3)` convolution: an input `[C_in, H, W]`, `C_out` output
/// channels, zero padding `p` on every side, stride 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinogradF2 {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    p: usize,
    ho: usize,
    wo: usize,
    /// Tile rows and columns: each tile covers 2×2 outputs (the last ones may hang over).
    th: usize,
    tw: usize,
}

impl WinogradF2 {
    /// The geometry for an input `[c_in, h, w]` with padding `p` and `c_out` outputs.
    ///
    /// # Panics
    /// When the 3×3 kernel does not fit the padded input, or a size is negative.
    pub fn new([c_in, h, w]: [i64; 3], c_out: i64, p: i64) -> Self {
        assert!(
            c_in >= 0 && c_out >= 0 && p >= 0 && h + 2 * p >= 3 && w + 2 * p >= 3,
            "Winograd F(2x2, 3x3): padding {p} on [{c_in}, {h}, {w}]"
        );
        let u = |v: i64| v as usize;
        let (ho, wo) = (u(h + 2 * p - 2), u(w + 2 * p - 2));
        Self {
            c_in: u(c_in),
            c_out: u(c_out),
            h: u(h),
            w: u(w),
            p: u(p),
            ho,
            wo,
            th: ho.div_ceil(2),
            tw: wo.div_ceil(2),
        }
    }

    /// Whether this geometry is one where difflab's Winograd path beats libtorch's and
    /// im2col's (`cargo bench -p difflab-lab --bench kernels -- conv`; docs/performance.md):
    /// the AVX-512 kernels present, at least [`MIN_TILES_PER_ROW`] tiles per row and
    /// [`MIN_INPUT_CHANNELS`] input channels, and at most [`MAX_CHANNELS`] input plus output
    /// channels.
    pub fn pays_off(&self) -> bool {
        fast_kernels()
            && self.tw >= MIN_TILES_PER_ROW
            && self.c_in >= MIN_INPUT_CHANNELS
            && self.c_in + self.c_out <= MAX_CHANNELS
    }

    /// Tile rows a thread transforms, multiplies and writes back in one go: as many as keep
    /// their transformed input and products within [`BAND_BYTES`] (at least one), so that
    /// each stage reads what the previous one wrote from the cache.
    fn band_rows(&self) -> usize {
        let per_row = TILE_POSITIONS * (self.c_in + self.c_out) * self.tw * 4;
        (BAND_BYTES / per_row.max(1)).clamp(1, self.th.max(1))
    }

    /// Output height and width.
    pub fn output_size(&self) -> [usize; 2] {
        [self.ho, self.wo]
    }

    /// Tiles of 2×2 outputs.
    pub fn tiles(&self) -> usize {
        self.th * self.tw
    }

    /// Elements of the transformed input `V` `[16, C_in, tiles]` (rows and planes padded,
    /// see `WinogradF2::row_stride`).
    pub fn transformed_input_len(&self) -> usize {
        TILE_POSITIONS * self.plane_stride(self.c_in)
    }

    /// Elements of the products `M` `[16, C_out, tiles]` (padded as `V`).
    pub fn products_len(&self) -> usize {
        TILE_POSITIONS * self.plane_stride(self.c_out)
    }

    /// Elements from one row of `V` or `M` to the next: the tiles plus 16, so that rows (and,
    /// with [`WinogradF2::plane_stride`], the 16 planes a transform touches at once) do not lie
    /// a power of two apart and compete for the same cache sets (see docs/performance.md).
    fn row_stride(&self) -> usize {
        self.tiles() + 16
    }

    /// Elements from one tile position's plane of `rows` rows to the next.
    fn plane_stride(&self, rows: usize) -> usize {
        rows * self.row_stride() + 16
    }

    /// `out = conv(x) + bias + residual` (each addend optional), `out` `[C_out, H', W']`.
    ///
    /// # Safety
    /// `x` points to `C_in·H·W` readable f32; `u` to the `16·C_out·C_in` of
    /// [`transform_weight`]; `bias`, if given, to `C_out` and `residual` to `C_out·H'·W'`
    /// readable f32; `v`, `m` and `out` to [`WinogradF2::transformed_input_len`],
    /// [`WinogradF2::products_len`] and `C_out·H'·W'` writable f32 that nothing else touches
    /// during the call; the written buffers overlap nothing; the BLAS is reachable
    /// ([`blas::direct`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run(
        &self,
        x: *const f32,
        u: *const f32,
        bias: Option<*const f32>,
        residual: Option<*const f32>,
        v: *mut f32,
        m: *mut f32,
        out: *mut f32,
    ) {
        let buffers = Buffers {
            x: SyncPtr(x as *mut f32),
            u: SyncPtr(u as *mut f32),
            bias: bias.map(|b| SyncPtr(b as *mut f32)),
            residual: residual.map(|r| SyncPtr(r as *mut f32)),
            m: SyncPtr(m),
            out: SyncPtr(out),
        };
        if self.tiles() == 0 || self.c_out == 0 {
            return;
        }
        let v = SyncPtr(v);
        let vectorised = fast_kernels() && !PORTABLE_ONLY.with(|flag| flag.get());
        if self.tiles() <= CHANNEL_SPLIT_MAX_TILES {
            // Few tiles (8 px outputs): each thread transforms the whole input into a buffer
            // of its own (the first thread into `v`) and computes a share of the output
            // channels, so that its products have every tile as columns.
            omp_team::for_each_chunk_grain(self.c_out, 4, 16, |channels| {
                let mut own = Vec::new();
                let v = if channels.start == 0 {
                    v.get()
                } else {
                    own.resize(self.transformed_input_len(), 0.0_f32);
                    own.as_mut_ptr()
                };
                // SAFETY: the caller vouches for the buffers; this thread writes only its own
                // transformed input and the products and outputs of its own channels.
                unsafe { self.tile_rows(0..self.th, channels, v, &buffers, vectorised) }
            });
            return;
        }
        let band = self.band_rows();
        omp_team::for_each_chunk_grain(self.th, 1, 1, |rows| {
            for start in rows.clone().step_by(band) {
                let band = start..(start + band).min(rows.end);
                // SAFETY: the caller vouches for the buffers; every thread writes only the
                // tiles (columns of `v` and `m`) and output rows of its own tile rows.
                unsafe { self.tile_rows(band, 0..self.c_out, v.get(), &buffers, vectorised) }
            }
        });
    }

    /// Input transform (into `v`, laid out as [`WinogradF2::transformed_input_len`] says), the
    /// 16 products and the output transform for the tiles of `rows` and the output
    /// `channels`, with the AVX-512 kernels if `vectorised` (the caller checked the CPU has
    /// them).
    unsafe fn tile_rows(
        &self,
        rows: Range<usize>,
        channels: Range<usize>,
        v: *mut f32,
        buf: &Buffers,
        vectorised: bool,
    ) {
        let v = SyncPtr(v);
        #[cfg(target_arch = "x86_64")]
        if vectorised {
            // SAFETY: the CPU has AVX-512F (checked by `run`); the caller vouches for the rest.
            return unsafe { self.tile_rows_avx512(rows, channels, v, buf) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vectorised;
        let ld = self.row_stride();
        let (t0, tn) = (rows.start * self.tw, rows.len() * self.tw);
        // SAFETY: `run` checked the buffers' lengths for these rows and channels, and every index
        // below stays inside them.
        unsafe {
            self.transform_input(rows.clone(), v, buf);
            let ci = self.c_in as i64;
            for xi in 0..TILE_POSITIONS {
                blas::gemm_row_major(
                    [channels.len() as i64, tn as i64, ci],
                    buf.u
                        .get()
                        .add((xi * self.c_out + channels.start) * self.c_in),
                    ci,
                    v.get().add(xi * self.plane_stride(self.c_in) + t0),
                    ld as i64,
                    buf.m
                        .get()
                        .add(xi * self.plane_stride(self.c_out) + channels.start * ld + t0),
                    ld as i64,
                );
            }
            self.transform_output(rows, channels, buf);
        }
    }

    /// [`WinogradF2::tile_rows`] with AVX-512 kernels: a tile row of up to 16 tiles is one
    /// vector per tile position in both transforms, and the products go through a 4×32
    /// register-blocked kernel (MKL's `sgemm_` spends more on packing and setup than on the
    /// arithmetic at these sizes: `[C_out, C_in] × [C_in, ≤ 128]`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_rows_avx512(
        &self,
        rows: Range<usize>,
        channels: Range<usize>,
        v: SyncPtr<f32>,
        buf: &Buffers,
    ) {
        let (ld, tw, half) = (self.row_stride(), self.tw, self.tw + 1);
        let (t0, tn) = (rows.start * tw, rows.len() * tw);
        let mut rows_buf = PaddedRows::new(rows.len(), half);
        let (in_plane, out_plane) = (self.plane_stride(self.c_in), self.plane_stride(self.c_out));
        // SAFETY: `run` checked the buffers' lengths and this function's AVX-512F feature; every
        // offset below stays inside those lengths.
        unsafe {
            let input = buf.x.slice(0..self.c_in * self.h * self.w);
            for c in 0..self.c_in {
                let plane = &input[c * self.h * self.w..(c + 1) * self.h * self.w];
                rows_buf.fill(plane, [self.h, self.w, self.p], rows.start, |row, e, o| {
                    // AVX-512F is this function's feature; `row` holds 2·len(e) values.
                    avx512::deinterleave(row, e, o)
                });
                for j in 0..rows.len() {
                    avx512::input_tile_row(
                        rows_buf.even[2 * j * half..].as_ptr(),
                        rows_buf.odd[2 * j * half..].as_ptr(),
                        half,
                        tw,
                        v.get().add(c * ld + t0 + j * tw),
                        in_plane,
                    );
                }
            }
            for xi in 0..TILE_POSITIONS {
                avx512::gemm(
                    [channels.len(), tn, self.c_in],
                    buf.u
                        .get()
                        .add((xi * self.c_out + channels.start) * self.c_in),
                    self.c_in,
                    v.get().add(xi * in_plane + t0),
                    ld,
                    buf.m.get().add(xi * out_plane + channels.start * ld + t0),
                    ld,
                );
            }
            let (ho, wo) = (self.ho, self.wo);
            for c in channels {
                let bias = buf.bias.map_or(0.0, |b| *b.get().add(c));
                for j in rows.clone() {
                    let out_row = |a: usize| {
                        let y = 2 * j + a;
                        (y < ho).then(|| {
                            let at = (c * ho + y) * wo;
                            (
                                buf.out.get().add(at),
                                buf.residual.map(|r| r.get().add(at) as *const f32),
                            )
                        })
                    };
                    avx512::output_tile_row(
                        buf.m.get().add(c * ld + j * tw),
                        out_plane,
                        tw,
                        bias,
                        [out_row(0), out_row(1)],
                        wo,
                    );
                }
            }
        }
    }

    /// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for the tiles of `rows`, one tile at a time (the portable
    /// path: correctness, not speed).
    unsafe fn transform_input(&self, rows: Range<usize>, v: SyncPtr<f32>, buf: &Buffers) {
        let (h, w, p, tw) = (self.h, self.w, self.p, self.tw);
        let (ld, plane) = (self.row_stride(), self.plane_stride(self.c_in));
        // SAFETY: see `run`.
        let input = unsafe { buf.x.slice(0..self.c_in * h * w) };
        for c in 0..self.c_in {
            let image = &input[c * h * w..(c + 1) * h * w];
            // The zero-padded image at padded coordinates.
            let padded = |y: usize, x: usize| {
                let inside = |v: usize, n: usize| v.checked_sub(p).filter(|&v| v < n);
                inside(y, h)
                    .zip(inside(x, w))
                    .map_or(0.0, |(y, x)| image[y * w + x])
            };
            for ty in rows.clone() {
                for tx in 0..tw {
                    let d = std::array::from_fn(|r| {
                        std::array::from_fn(|q| padded(2 * ty + r, 2 * tx + q))
                    });
                    for (xi, value) in bt_d_b(d).into_iter().flatten().enumerate() {
                        // SAFETY: position `xi`, channel `c`, a tile of this thread's rows.
                        unsafe { *v.get().add(xi * plane + c * ld + ty * tw + tx) = value };
                    }
                }
            }
        }
    }

    /// `out[c][2y + a][2x + b] = (Aᵀ M A)[a][b] + bias[c] + residual[…]` for the tiles of
    /// `rows` and the output `channels`, one tile at a time, dropping the outputs of tiles that
    /// hang over the edge (the portable path).
    unsafe fn transform_output(&self, rows: Range<usize>, channels: Range<usize>, buf: &Buffers) {
        let (ho, wo, tw) = (self.ho, self.wo, self.tw);
        let (ld, plane) = (self.row_stride(), self.plane_stride(self.c_out));
        // SAFETY: `run` checked the buffers' lengths; every index below lies inside them and
        // belongs to this thread's tiles and channels, which no other thread writes.
        unsafe {
            let m = buf.m.slice(0..self.products_len());
            for c in channels {
                let bias = buf.bias.map_or(0.0, |b| *b.get().add(c));
                for ty in rows.clone() {
                    for tx in 0..tw {
                        let at = c * ld + ty * tw + tx;
                        let tile = std::array::from_fn(|i| {
                            std::array::from_fn(|j| m[(4 * i + j) * plane + at])
                        });
                        for (a, row) in at_m_a(tile).into_iter().enumerate() {
                            for (b, value) in row.into_iter().enumerate() {
                                let (y, x) = (2 * ty + a, 2 * tx + b);
                                if y < ho && x < wo {
                                    let index = (c * ho + y) * wo + x;
                                    let residual =
                                        buf.residual.map_or(0.0, |r| *r.get().add(index));
                                    *buf.out.get().add(index) = residual + (value + bias);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `Bᵀ d` on a column of four: `d0 − d2`, `d1 + d2`, `d2 − d1`, `d1 − d3`.
fn bt(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `Bᵀ d B` of one 4×4 tile.
fn bt_d_b(d: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    let columns: [[f32; 4]; 4] = std::array::from_fn(|q| bt(d.map(|row| row[q])));
    std::array::from_fn(|i| bt(columns.map(|column| column[i])))
}

/// `Aᵀ m` on a column of four: `m0 + m1 + m2`, `m1 − m2 − m3`.
fn at(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// `Aᵀ m A` of one tile's 4×4 products: its 2×2 outputs.
fn at_m_a(m: [[f32; 4]; 4]) -> [[f32; 2]; 2] {
    let columns: [[f32; 2]; 4] = std::array::from_fn(|j| at(m.map(|row| row[j])));
    std::array::from_fn(|a| at(columns.map(|column| column[a])))
}

/// One channel's padded input rows under a band of tile rows, split into even and odd columns.
struct PaddedRows {
    even: Vec<f32>,
    odd: Vec<f32>,
    padded: Vec<f32>,
    half: usize,
}

impl PaddedRows {
    /// Room for the `2·tile_rows + 2` padded rows under `tile_rows` rows of tiles, `half`
    /// (tiles per row + 1) even and odd columns each.
    fn new(tile_rows: usize, half: usize) -> Self {
        let rows = 2 * tile_rows + 2;
        Self {
            even: vec![0.0; rows * half],
            odd: vec![0.0; rows * half],
            padded: vec![0.0; 2 * half],
            half,
        }
    }

    /// The rows from padded row `2·first_tile_row` on, of a `[h, w]` `plane` zero-padded by
    /// `p` (2·half ≥ w + 2p: the tiles cover the padded input, so the border of `padded`
    /// stays zero), each split by `split` (`row`, `even`, `odd`) into its even and odd columns.
    #[inline(always)]
    fn fill(
        &mut self,
        plane: &[f32],
        [h, w, p]: [usize; 3],
        first_tile_row: usize,
        split: impl Fn(&[f32], &mut [f32], &mut [f32]),
    ) {
        let half = self.half;
        for (r, (e, o)) in self
            .even
            .chunks_exact_mut(half)
            .zip(self.odd.chunks_exact_mut(half))
            .enumerate()
        {
            match (2 * first_tile_row + r).checked_sub(p).filter(|&y| y < h) {
                Some(y) => {
                    self.padded[p..p + w].copy_from_slice(&plane[y * w..(y + 1) * w]);
                    split(&self.padded, e, o);
                }
                None => {
                    e.fill(0.0);
                    o.fill(0.0);
                }
            }
        }
    }
}

/// The AVX-512 kernels of [`WinogradF2::tile_rows_avx512`]: 16 tiles per vector.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Whether the CPU has AVX-512F (cached by the standard library's detection).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// The first `n` lanes (all 16 from 16 on).
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1_u32 << n) - 1) as __mmask16
        }
    }

    /// All 16 positions `V[ξ]` of `tw` consecutive tiles: the tiles' four padded rows start at
    /// `even`/`odd` (their even and odd columns, `row_stride` apart, `tw + 1` each), position
    /// `ξ` is written at `v + ξ·plane_stride`.
    ///
    /// # Safety
    /// AVX-512F; four rows of `tw + 1` readable f32 at each of `even` and `odd`; `tw` writable
    /// f32 at each `v + ξ·plane_stride`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_tile_row(
        even: *const f32,
        odd: *const f32,
        row_stride: usize,
        tw: usize,
        v: *mut f32,
        plane_stride: usize,
    ) {
        let mut x = 0;
        while x < tw {
            let m = lanes(tw - x);
            // SAFETY: AVX-512F is this function's target feature (checked by the caller), and the
            // masked lanes stay within the rows and planes the caller vouched for.
            unsafe {
                let load = |p: *const f32| _mm512_maskz_loadu_ps(m, p);
                // (·) B on each row: tile columns e[x], o[x], e[x + 1], o[x + 1].
                let mut d = [[_mm512_setzero_ps(); 4]; 4];
                for (r, dr) in d.iter_mut().enumerate() {
                    let (er, or) = (even.add(r * row_stride + x), odd.add(r * row_stride + x));
                    let (e0, e1, o0, o1) = (load(er), load(er.add(1)), load(or), load(or.add(1)));
                    *dr = [
                        _mm512_sub_ps(e0, e1),
                        _mm512_add_ps(o0, e1),
                        _mm512_sub_ps(e1, o0),
                        _mm512_sub_ps(o0, o1),
                    ];
                }
                // Bᵀ (·): the row combinations.
                let [d0, d1, d2, d3] = d;
                for (jx, (((r0, r1), r2), r3)) in d0.into_iter().zip(d1).zip(d2).zip(d3).enumerate()
                {
                    let rows = [
                        _mm512_sub_ps(r0, r2),
                        _mm512_add_ps(r1, r2),
                        _mm512_sub_ps(r2, r1),
                        _mm512_sub_ps(r1, r3),
                    ];
                    for (i, value) in rows.into_iter().enumerate() {
                        _mm512_mask_storeu_ps(v.add((4 * i + jx) * plane_stride + x), m, value);
                    }
                }
            }
            x += 16;
        }
    }

    /// `even[k] = row[2k]`, `odd[k] = row[2k + 1]` for `k < even.len()`, 16 at a time.
    ///
    /// # Safety
    /// AVX-512F; `row` holds `2·even.len()` values and `odd` as many as `even`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let n = even.len();
        assert!(row.len() >= 2 * n && odd.len() >= n);
        let pick_even =
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let pick_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mut k = 0;
        while k < n {
            let count = n - k;
            let (m, m_lo, m_hi) = (
                lanes(count),
                lanes(2 * count),
                lanes((2 * count).saturating_sub(16)),
            );
            // SAFETY: the masks keep every access inside `row`, `even` and `odd` (checked
            // lengths above).
            unsafe {
                let src = row.as_ptr().add(2 * k);
                let lo = _mm512_maskz_loadu_ps(m_lo, src);
                let hi = _mm512_maskz_loadu_ps(m_hi, src.wrapping_add(16));
                _mm512_mask_storeu_ps(
                    even.as_mut_ptr().add(k),
                    m,
                    _mm512_permutex2var_ps(lo, pick_even, hi),
                );
                _mm512_mask_storeu_ps(
                    odd.as_mut_ptr().add(k),
                    m,
                    _mm512_permutex2var_ps(lo, pick_odd, hi),
                );
            }
            k += 16;
        }
    }

    /// `c ← a·b` for row-major `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]` (row strides `lda`,
    /// `ldb`, `ldc`): blocks of 4 rows × 32 columns held in eight registers over the whole
    /// `k` loop, the columns past `n` masked off.
    ///
    /// # Safety
    /// AVX-512F; the three matrices lie in memory of the sizes their shapes and strides
    /// describe (`c` writable, overlapping neither input).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(
        [m, n, k]: [usize; 3],
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut j = 0;
        while j < n {
            let masks = (lanes(n - j), lanes((n - j).saturating_sub(16)));
            let mut i = 0;
            // SAFETY: AVX-512F is this function's target feature (checked by the caller); rows
            // `i..i + R` and columns `j..` (masked to `n`) are inside the matrices, and pointers
            // to masked-off lanes are formed with `wrapping_add`.
            unsafe {
                if n - j <= 16 {
                    // One vector of columns: eight rows at a time keep the FMA units busy.
                    while i + 8 <= m {
                        narrow::<8>(
                            k,
                            a.add(i * lda),
                            lda,
                            b.wrapping_add(j),
                            ldb,
                            c.add(i * ldc).wrapping_add(j),
                            ldc,
                            masks.0,
                        );
                        i += 8;
                    }
                    while i < m {
                        narrow::<1>(
                            k,
                            a.add(i * lda),
                            lda,
                            b.wrapping_add(j),
                            ldb,
                            c.add(i * ldc).wrapping_add(j),
                            ldc,
                            masks.0,
                        );
                        i += 1;
                    }
                    j += 32;
                    continue;
                }
                while i + 4 <= m {
                    block::<4>(
                        k,
                        a.add(i * lda),
                        lda,
                        b.wrapping_add(j),
                        ldb,
                        c.add(i * ldc).wrapping_add(j),
                        ldc,
                        masks,
                    );
                    i += 4;
                }
                while i < m {
                    block::<1>(
                        k,
                        a.add(i * lda),
                        lda,
                        b.wrapping_add(j),
                        ldb,
                        c.add(i * ldc).wrapping_add(j),
                        ldc,
                        masks,
                    );
                    i += 1;
                }
            }
            j += 32;
        }
    }

    /// `R` rows × 16 columns (masked by `mask`) of [`gemm`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn narrow<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        // SAFETY: the caller (`gemm`) holds AVX-512F and passes `R` rows and `k` columns of `a`,
        // `k` rows of `b` and `R` rows of `c` that lie inside their matrices.
        unsafe {
            for p in 0..k {
                let row = _mm512_maskz_loadu_ps(mask, b.wrapping_add(p * ldb));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * lda + p)), row, *acc);
                }
            }
            for (r, acc) in acc.into_iter().enumerate() {
                _mm512_mask_storeu_ps(c.wrapping_add(r * ldc), mask, acc);
            }
        }
    }

    /// `R` rows × 32 columns of [`gemm`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        (m0, m1): (__mmask16, __mmask16),
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        // SAFETY: the caller (`gemm`) holds AVX-512F and passes `R` rows and `k` columns of `a`,
        // `k` rows of `b` and `R` rows of `c` that lie inside their matrices.
        unsafe {
            for p in 0..k {
                let row = b.wrapping_add(p * ldb);
                let b0 = _mm512_maskz_loadu_ps(m0, row);
                let b1 = _mm512_maskz_loadu_ps(m1, row.wrapping_add(16));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.add(r * lda + p));
                    lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
                }
            }
            for r in 0..R {
                let row = c.wrapping_add(r * ldc);
                _mm512_mask_storeu_ps(row, m0, lo[r]);
                _mm512_mask_storeu_ps(row.wrapping_add(16), m1, hi[r]);
            }
        }
    }

    /// The two output rows `Aᵀ m A` of `tw` consecutive tiles, from the 16 product planes at
    /// `m + ξ·plane_stride`, plus `bias` and the residual row if given, into `rows[a]` (`None`
    /// for a row past the output's edge), `wo` outputs each.
    ///
    /// # Safety
    /// AVX-512F; `tw` readable f32 at each plane; each given row (and residual) holds `wo ≤
    /// 2·tw` writable (readable) f32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_tile_row(
        m: *const f32,
        plane_stride: usize,
        tw: usize,
        bias: f32,
        rows: [Option<(*mut f32, Option<*const f32>)>; 2],
        wo: usize,
    ) {
        let interleave_lo =
            _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let interleave_hi =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let bias = _mm512_set1_ps(bias);
        let mut x = 0;
        while x < tw {
            let mask = lanes(tw - x);
            // SAFETY: AVX-512F is this function's target feature (checked by the caller), and the
            // masked lanes stay inside the planes and rows the caller vouched for.
            unsafe {
                let p: [__m512; 16] = std::array::from_fn(|xi| {
                    _mm512_maskz_loadu_ps(mask, m.add(xi * plane_stride + x))
                });
                for (a, row) in rows.iter().enumerate() {
                    let Some((out, residual)) = *row else {
                        continue;
                    };
                    // Row `a` of Aᵀ: (1, 1, 1, 0) or (0, 1, −1, −1), on each column.
                    let s: [__m512; 4] = std::array::from_fn(|jx| {
                        if a == 0 {
                            _mm512_add_ps(_mm512_add_ps(p[jx], p[4 + jx]), p[8 + jx])
                        } else {
                            _mm512_sub_ps(_mm512_sub_ps(p[4 + jx], p[8 + jx]), p[12 + jx])
                        }
                    });
                    let y0 = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]);
                    let y1 = _mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]);
                    // Outputs 2x, 2x + 1, …: even ones from y0, odd ones from y1.
                    let first = _mm512_add_ps(_mm512_permutex2var_ps(y0, interleave_lo, y1), bias);
                    let second = _mm512_add_ps(_mm512_permutex2var_ps(y0, interleave_hi, y1), bias);
                    let start = 2 * x;
                    let (m_first, m_second) = (
                        lanes(wo.saturating_sub(start)),
                        lanes(wo.saturating_sub(start + 16)),
                    );
                    let (mut first, mut second) = (first, second);
                    if let Some(res) = residual {
                        first = _mm512_add_ps(
                            _mm512_maskz_loadu_ps(m_first, res.wrapping_add(start)),
                            first,
                        );
                        second = _mm512_add_ps(
                            _mm512_maskz_loadu_ps(m_second, res.wrapping_add(start + 16)),
                            second,
                        );
                    }
                    _mm512_mask_storeu_ps(out.wrapping_add(start), m_first, first);
                    _mm512_mask_storeu_ps(out.wrapping_add(start + 16), m_second, second);
                }
            }
            x += 16;
        }
    }
}

/// The buffers of one call, shared by the threads of the region.
struct Buffers {
    x: SyncPtr<f32>,
    u: SyncPtr<f32>,
    bias: Option<SyncPtr<f32>>,
    residual: Option<SyncPtr<f32>>,
    m: SyncPtr<f32>,
    out: SyncPtr<f32>,
}

// SAFETY: see `SyncPtr`; each thread writes only its own tiles and rows.
unsafe impl Sync for Buffers {}
