//! The forward process of a training batch in one pass: `x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε` and, for
//! v-prediction, `v = √ᾱ_t ε − √(1−ᾱ_t) x₀`, with the same f32 products and sums in the same
//! order as the tensor operations (so the same bits), without their seven dispatches and
//! temporaries (a visible share of a small model's training step).

use tch::{Device, Kind, Tensor};

/// `(x_t, v)` (`v` only with `velocity`) for `x0` and `noise` (contiguous f32 CPU `[B, …]`, no
/// autograd record), int64 CPU timesteps `t` `[B]` and the tables `sqrt_alpha_bar`,
/// `sqrt_one_minus_alpha_bar` (contiguous f32 CPU `[T]`); `None` for anything else, or a step
/// outside `0..T`.
pub fn q_sample_and_velocity(
    x0: &Tensor,
    t: &Tensor,
    noise: &Tensor,
    sqrt_alpha_bar: &Tensor,
    sqrt_one_minus_alpha_bar: &Tensor,
    velocity: bool,
) -> Option<(Tensor, Option<Tensor>)> {
    let plain = |x: &Tensor| {
        x.device() == Device::Cpu
            && x.kind() == Kind::Float
            && x.is_contiguous()
            && !x.requires_grad()
    };
    let table_len = sqrt_alpha_bar.numel();
    let applies = plain(sqrt_alpha_bar)
        && plain(sqrt_one_minus_alpha_bar)
        && sqrt_one_minus_alpha_bar.numel() == table_len
        && plain(x0)
        && plain(noise)
        && x0.dim() >= 1
        && x0.size() == noise.size()
        && t.kind() == Kind::Int64
        && t.device() == Device::Cpu
        && t.size() == [x0.size()[0]];
    if !applies {
        return None;
    }
    let steps = Vec::<i64>::try_from(t.contiguous()).ok()?;
    let (n, batch) = (x0.numel(), steps.len());
    if batch == 0 || n == 0 || steps.iter().any(|&s| !(0..table_len as i64).contains(&s)) {
        return None;
    }
    let per_sample = n / batch;
    let x_t = x0.empty_like();
    let target = velocity.then(|| x0.empty_like());
    // SAFETY: `x0` and `noise` are contiguous f32 CPU tensors of `n` elements, `x_t` a fresh
    // one, and the tables contiguous f32 CPU vectors of `table_len` elements (all checked
    // above); the slices live only in this function.
    let (x, e, out, a_table, s_table) = unsafe {
        (
            std::slice::from_raw_parts(x0.data_ptr() as *const f32, n),
            std::slice::from_raw_parts(noise.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(x_t.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(sqrt_alpha_bar.data_ptr() as *const f32, table_len),
            std::slice::from_raw_parts(
                sqrt_one_minus_alpha_bar.data_ptr() as *const f32,
                table_len,
            ),
        )
    };
    let mut v = target.as_ref().map(|v| {
        // SAFETY: `v` is a fresh contiguous f32 CPU tensor of `n` elements (`empty_like` of
        // `x0`), alive for this function.
        unsafe { std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n) }
    });
    for (i, &step) in steps.iter().enumerate() {
        let (a, s) = (a_table[step as usize], s_table[step as usize]);
        for j in i * per_sample..(i + 1) * per_sample {
            out[j] = x[j] * a + e[j] * s;
            if let Some(v) = v.as_mut() {
                v[j] = a * e[j] - s * x[j];
            }
        }
    }
    Some((x_t, target))
}
