//! Per-thread caches of small tensors that every denoiser call would otherwise recompute: the
//! sinusoidal embedding's frequencies, and a table of the codes of every integer timestep
//! from which a batch's codes are copied row by row (one copy per row instead of five libtorch
//! operations per call, a visible share of a small model's training step).

use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

/// What a cached tensor is: a name and up to four numbers (sizes, bit patterns of floats, a
/// device code from [`device_code`]).
pub type Key = (&'static str, [u64; 4]);

/// A device as a number for a [`Key`].
pub fn device_code(device: Device) -> u64 {
    match device {
        Device::Cpu => 0,
        Device::Cuda(i) => 1 + i as u64,
        Device::Mps => u64::MAX - 1,
        Device::Vulkan => u64::MAX,
    }
}

thread_local! {
    static MEMO: RefCell<Vec<(Key, Tensor)>> = const { RefCell::new(Vec::new()) };
    static TABLES: RefCell<Vec<(Key, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// The tensor `make()` returns, computed once per thread and `key` (a shallow copy of the
/// cached one: callers must not modify it in place).
pub fn memoized(key: Key, make: impl FnOnce() -> Tensor) -> Tensor {
    MEMO.with_borrow_mut(|memo| {
        if let Some((_, t)) = memo.iter().find(|(k, _)| *k == key) {
            return t.shallow_clone();
        }
        let t = tch::no_grad(make);
        memo.push((key, t.shallow_clone()));
        t
    })
}

/// Most rows a table of [`tabulated`] grows to (integer timesteps `0..2¹⁴`).
pub const TABLE_MAX_ROWS: i64 = 1 << 14;

/// Rows `t` (int64 CPU `[B]`, values in `0..TABLE_MAX_ROWS`) of the f32 table `table(all)`
/// `[rows, width]` of `all = 0..rows`, built once per thread and `key` and grown as larger
/// values are seen; `None` for other `t`. The caller vouches that `table` row `i` is what it
/// would compute for `i` alone, to the bit.
pub fn tabulated(
    t: &Tensor,
    key: Key,
    width: i64,
    table: impl FnOnce(&Tensor) -> Tensor,
) -> Option<Tensor> {
    if !(t.device() == Device::Cpu && t.kind() == Kind::Int64 && t.dim() == 1 && width > 0) {
        return None;
    }
    let steps = Vec::<i64>::try_from(t.contiguous()).ok()?;
    let (&lo, &hi) = (steps.iter().min()?, steps.iter().max()?);
    if lo < 0 || hi >= TABLE_MAX_ROWS {
        return None;
    }
    TABLES.with_borrow_mut(|tables| {
        let at = match tables.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                tables.push((key, Tensor::empty([0, width], (Kind::Float, Device::Cpu))));
                tables.len() - 1
            }
        };
        let cached = &mut tables[at].1;
        if cached.size()[0] <= hi {
            let rows = ((hi + 1) as u64).next_power_of_two() as i64;
            let rows = rows.clamp(1024, TABLE_MAX_ROWS);
            let all = Tensor::arange(rows, (Kind::Int64, Device::Cpu));
            let built = tch::no_grad(|| table(&all))
                .to_kind(Kind::Float)
                .contiguous();
            if built.size() != [rows, width] {
                return None;
            }
            *cached = built;
        }
        let width = width as usize;
        let out = Tensor::empty(
            [steps.len() as i64, width as i64],
            (Kind::Float, Device::Cpu),
        );
        // SAFETY: `cached` is a contiguous f32 CPU matrix of at least `hi + 1` rows of `width`
        // (checked when built), `out` a fresh contiguous one of `steps.len()` rows of `width`;
        // the slices live only in this block.
        let (src, dst) = unsafe {
            (
                std::slice::from_raw_parts(cached.data_ptr() as *const f32, cached.numel()),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, out.numel()),
            )
        };
        for (row, &step) in dst.chunks_exact_mut(width).zip(&steps) {
            let from = step as usize * width;
            row.copy_from_slice(&src[from..from + width]);
        }
        Some(out)
    })
}
