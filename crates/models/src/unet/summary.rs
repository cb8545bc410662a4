//! A per-block table of a model: output shapes and parameter counts.

use std::fmt;

/// One top-level block of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    /// Parameter-name prefix of the block (`down_blocks.0`, `mid_block`, …).
    pub name: String,
    /// Shape of the block's output for the summary's input.
    pub output_shape: Vec<i64>,
    /// Number of scalar parameters in the block.
    pub params: i64,
}

/// Blocks in forward order with their output shapes and parameter counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSummary {
    /// The input the shapes were computed for (`[1, C, H, W]`; `[1, D]` for vector models).
    pub input_shape: Vec<i64>,
    /// The blocks, in the order the forward pass runs them.
    pub rows: Vec<SummaryRow>,
    /// Sum of the rows' parameters (every parameter of the model).
    pub total_params: i64,
}

impl ModelSummary {
    /// The summary of `(block name, output shape)` pairs traced for `input`, with each block's
    /// parameters counted by `params`; the total is their sum.
    pub fn from_blocks(
        input: &[i64],
        shapes: Vec<(String, Vec<i64>)>,
        params: impl Fn(&str) -> i64,
    ) -> Self {
        let rows: Vec<SummaryRow> = shapes
            .into_iter()
            .map(|(name, output_shape)| SummaryRow {
                params: params(&name),
                name,
                output_shape,
            })
            .collect();
        Self {
            input_shape: input.to_vec(),
            total_params: rows.iter().map(|r| r.params).sum(),
            rows,
        }
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |s: &[i64]| {
            let parts: Vec<String> = s.iter().map(i64::to_string).collect();
            format!("[{}]", parts.join(", "))
        };
        let width = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "input {}", shape(&self.input_shape))?;
        writeln!(f, "{:<width$}  {:<20}  {:>12}", "block", "output", "params")?;
        for row in &self.rows {
            writeln!(
                f,
                "{:<width$}  {:<20}  {:>12}",
                row.name,
                shape(&row.output_shape),
                row.params
            )?;
        }
        write!(
            f,
            "{:<width$}  {:<20}  {:>12}",
            "total", "", self.total_params
        )
    }
}
