//! Counting parameters of the building blocks, for model summaries.

use tch::nn;

/// Number of scalar parameters a module holds (weights and biases, trainable or not).
pub trait ParamCount {
    /// Total element count of this module's parameters.
    fn param_count(&self) -> i64;
}

fn opt_numel(t: &Option<tch::Tensor>) -> i64 {
    t.as_ref().map_or(0, |t| t.numel() as i64)
}

impl ParamCount for nn::Conv2D {
    fn param_count(&self) -> i64 {
        self.ws.numel() as i64 + opt_numel(&self.bs)
    }
}

impl ParamCount for nn::Linear {
    fn param_count(&self) -> i64 {
        self.ws.numel() as i64 + opt_numel(&self.bs)
    }
}

impl ParamCount for nn::GroupNorm {
    fn param_count(&self) -> i64 {
        opt_numel(&self.ws) + opt_numel(&self.bs)
    }
}

impl ParamCount for nn::Embedding {
    fn param_count(&self) -> i64 {
        self.ws.numel() as i64
    }
}

impl<T: ParamCount> ParamCount for Option<T> {
    fn param_count(&self) -> i64 {
        self.as_ref().map_or(0, ParamCount::param_count)
    }
}

impl<T: ParamCount> ParamCount for [T] {
    fn param_count(&self) -> i64 {
        self.iter().map(ParamCount::param_count).sum()
    }
}

impl<T: ParamCount> ParamCount for Vec<T> {
    fn param_count(&self) -> i64 {
        self.as_slice().param_count()
    }
}
