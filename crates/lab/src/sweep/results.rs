//! The sweep's results: one row per point × evaluation setting × seed, gathered from the
//! points' status and `eval.json` files, written as `results.csv` and summarised (mean ± std
//! over seeds, best per metric in bold) as `results.md`.

use std::fmt::Write as _;

use super::eval::read_eval_json;
use super::plan::{Plan, Point, value_text};
use super::status::{PointState, PointStatus, read_status};

/// One row of `results.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    /// The point's name.
    pub point: String,
    /// The point's value for each of the table's keys (empty when it does not set it).
    pub values: Vec<String>,
    /// Sampler label (`ddim`, or `ddim eta=0.5` when η is set); none without `evaluate:`.
    pub sampler: Option<String>,
    /// Sampling steps.
    pub steps: Option<u64>,
    /// Evaluation seed.
    pub seed: Option<u64>,
    /// done, failed, running or pending.
    pub status: String,
    /// Metric values, in the order they were reported.
    pub metrics: Vec<(String, f64)>,
    /// The real-vs-real floor of each metric, when the evaluation reports one.
    pub floor: Vec<(String, f64)>,
    /// One-line error of a failed row.
    pub error: Option<String>,
}

/// All rows of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultsTable {
    /// Sweep name (the markdown title).
    pub name: String,
    /// The varied keys (columns after `point`).
    pub keys: Vec<String>,
    /// The rows, in plan order.
    pub rows: Vec<ResultRow>,
}

/// Rows of one point and setting, summarised over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The point's name.
    pub point: String,
    /// The point's values (as in [`ResultRow::values`]).
    pub values: Vec<String>,
    /// Sampler label.
    pub sampler: Option<String>,
    /// Sampling steps.
    pub steps: Option<u64>,
    /// Finished rows (seeds) in the summary.
    pub n: usize,
    /// Rows in the group.
    pub total: usize,
    /// `(metric, mean, std)` over finished rows; std is the sample std (0 for one seed).
    pub metrics: Vec<(String, f64, f64)>,
}

/// The last line of a command's output that says `error:`, else its last non-empty line.
pub fn error_summary(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// True for metrics where larger is better (names containing `per_sec`, `accuracy`,
/// `precision`, `recall`, `inception_score`, `psnr`, `ssim`, `coverage` or `density`); every
/// other metric (losses, FID, KID, seconds) is better when smaller.
pub fn higher_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    [
        "per_sec",
        "accuracy",
        "precision",
        "recall",
        "inception_score",
        "psnr",
        "ssim",
        "coverage",
        "density",
    ]
    .iter()
    .any(|k| m.contains(k))
}

fn training_metrics(status: &PointStatus) -> Vec<(String, f64)> {
    let mut m = Vec::new();
    if let Some(loss) = status.final_loss {
        m.push(("final_loss".to_string(), loss));
    }
    m.push(("train_seconds".to_string(), status.train_seconds));
    if let Some(ips) = status.images_per_sec {
        m.push(("images_per_sec".to_string(), ips));
    }
    m
}

fn state_name(status: Option<&PointStatus>) -> &'static str {
    match status.map(|s| s.state) {
        Some(PointState::Done) => "done",
        Some(PointState::Failed) => "failed",
        Some(PointState::Running) => "running",
        None => "pending",
    }
}

fn point_values(plan: &Plan, point: &Point) -> Vec<String> {
    plan.keys
        .iter()
        .map(|k| point.value(k).map(value_text).unwrap_or_default())
        .collect()
}

/// Gather the rows of `plan` from what is on disk: each point's `sweep-status.json` and each
/// evaluation's `eval.json`. Without `evaluate:` a point's metrics are its training metrics
/// (`final_loss`, `train_seconds`, `images_per_sec`); with it, the evaluation's metrics and
/// `final_loss`.
pub fn collect(plan: &Plan) -> ResultsTable {
    let mut rows = Vec::new();
    for point in &plan.points {
        let run_dir = plan.run_dir(point);
        let status = read_status(&run_dir);
        let failed_error = status
            .as_ref()
            .filter(|s| s.state == PointState::Failed)
            .map(|s| {
                let what = error_summary(s.error.as_deref().unwrap_or(""));
                format!("{}: {what}", s.phase)
            });
        let values = point_values(plan, point);
        if plan.evals.is_empty() {
            let done = status.as_ref().is_some_and(|s| s.state == PointState::Done);
            rows.push(ResultRow {
                point: point.name.clone(),
                values,
                sampler: None,
                steps: None,
                seed: None,
                status: state_name(status.as_ref()).into(),
                metrics: match (&status, done) {
                    (Some(s), true) => training_metrics(s),
                    _ => Vec::new(),
                },
                floor: Vec::new(),
                error: failed_error,
            });
            continue;
        }
        for job in &plan.evals {
            let sampler = match job.setting.eta {
                Some(eta) => format!("{} eta={eta}", job.setting.sampler),
                None => job.setting.sampler.to_string(),
            };
            let mut row = ResultRow {
                point: point.name.clone(),
                values: values.clone(),
                sampler: Some(sampler),
                steps: Some(job.setting.steps),
                seed: Some(job.seed),
                status: String::new(),
                metrics: Vec::new(),
                floor: Vec::new(),
                error: None,
            };
            match read_eval_json(&job.result_file(&run_dir)) {
                Ok(Some(result)) => {
                    row.status = "done".into();
                    row.metrics = result.metrics.into_iter().collect();
                    if let Some(loss) = status.as_ref().and_then(|s| s.final_loss) {
                        row.metrics.push(("final_loss".into(), loss));
                    }
                    row.floor = result.floor.into_iter().collect();
                }
                Ok(None) => {
                    row.status = match state_name(status.as_ref()) {
                        "done" => "pending",
                        other => other,
                    }
                    .into();
                    row.error = failed_error.clone();
                }
                Err(e) => {
                    row.status = "failed".into();
                    row.error = Some(e);
                }
            }
            rows.push(row);
        }
    }
    ResultsTable {
        name: plan.sweep.spec.name.clone(),
        keys: plan.keys.clone(),
        rows,
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn names_in_order<'a>(lists: impl Iterator<Item = &'a Vec<(String, f64)>>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for list in lists {
        for (n, _) in list {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

fn lookup(list: &[(String, f64)], name: &str) -> Option<f64> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Four significant digits; scientific notation for very large or small values.
pub fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-3..6).contains(&mag) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - mag).max(0) as usize;
    format!("{x:.decimals$}")
}

fn format_mean_std(mean: f64, std: f64, n: usize) -> String {
    if n <= 1 {
        return format_number(mean);
    }
    let mag = if mean != 0.0 && mean.is_finite() {
        mean.abs().log10().floor() as i32
    } else {
        0
    };
    if !(-3..6).contains(&mag) {
        return format!("{mean:.3e} ± {std:.1e}");
    }
    let decimals = (3 - mag).max(0) as usize;
    format!("{mean:.decimals$} ± {std:.decimals$}")
}

impl ResultsTable {
    /// Every metric reported by some row, in order of first appearance.
    pub fn metric_names(&self) -> Vec<String> {
        names_in_order(self.rows.iter().map(|r| &r.metrics))
    }

    fn floor_names(&self) -> Vec<String> {
        names_in_order(self.rows.iter().map(|r| &r.floor))
    }

    /// True when the rows come from an `evaluate:` section (sampler columns apply).
    pub fn has_evaluations(&self) -> bool {
        self.rows.iter().any(|r| r.sampler.is_some())
    }

    /// `results.csv`: point, each key, sampler, steps, seed, status, each metric, each
    /// `floor.<metric>`, error.
    pub fn to_csv(&self) -> String {
        let metrics = self.metric_names();
        let floors = self.floor_names();
        let mut header = vec!["point".to_string()];
        header.extend(self.keys.iter().cloned());
        header.extend(["sampler", "steps", "seed", "status"].map(String::from));
        header.extend(metrics.iter().cloned());
        header.extend(floors.iter().map(|f| format!("floor.{f}")));
        header.push("error".into());
        let mut out = header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for r in &self.rows {
            let mut cells = vec![r.point.clone()];
            cells.extend(r.values.iter().cloned());
            cells.push(r.sampler.clone().unwrap_or_default());
            cells.push(r.steps.map(|s| s.to_string()).unwrap_or_default());
            cells.push(r.seed.map(|s| s.to_string()).unwrap_or_default());
            cells.push(r.status.clone());
            let num = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
            cells.extend(metrics.iter().map(|m| num(lookup(&r.metrics, m))));
            cells.extend(floors.iter().map(|m| num(lookup(&r.floor, m))));
            cells.push(r.error.clone().unwrap_or_default());
            out += &cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",");
            out.push('\n');
        }
        out
    }

    /// Rows grouped by point and setting (seeds folded), in row order.
    pub fn summaries(&self) -> Vec<Summary> {
        let metrics = self.metric_names();
        let mut groups: Vec<(Summary, Vec<&ResultRow>)> = Vec::new();
        for r in &self.rows {
            let found = groups
                .iter_mut()
                .find(|(s, _)| s.point == r.point && s.sampler == r.sampler && s.steps == r.steps);
            match found {
                Some((_, rows)) => rows.push(r),
                None => groups.push((
                    Summary {
                        point: r.point.clone(),
                        values: r.values.clone(),
                        sampler: r.sampler.clone(),
                        steps: r.steps,
                        n: 0,
                        total: 0,
                        metrics: Vec::new(),
                    },
                    vec![r],
                )),
            }
        }
        groups
            .into_iter()
            .map(|(mut s, rows)| {
                let done: Vec<&&ResultRow> = rows.iter().filter(|r| r.status == "done").collect();
                s.total = rows.len();
                s.n = done.len();
                for m in &metrics {
                    let xs: Vec<f64> = done.iter().filter_map(|r| lookup(&r.metrics, m)).collect();
                    if xs.is_empty() {
                        continue;
                    }
                    let n = xs.len() as f64;
                    let mean = xs.iter().sum::<f64>() / n;
                    let std = if xs.len() > 1 {
                        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                    } else {
                        0.0
                    };
                    s.metrics.push((m.clone(), mean, std));
                }
                s
            })
            .collect()
    }

    /// `results.md`: a markdown table of mean ± std over seeds with the best value per metric
    /// in bold, the real-vs-real floor when reported, and the failed or unfinished points.
    pub fn to_markdown(&self) -> String {
        let metrics = self.metric_names();
        let summaries = self.summaries();
        let evals = self.has_evaluations();
        let mut best: Vec<Option<f64>> = Vec::new();
        for m in &metrics {
            let means = summaries.iter().filter_map(|s| {
                s.metrics
                    .iter()
                    .find(|(n, _, _)| n == m)
                    .map(|(_, mean, _)| *mean)
            });
            best.push(if higher_is_better(m) {
                means.fold(None, |b: Option<f64>, x| Some(b.map_or(x, |b| b.max(x))))
            } else {
                means.fold(None, |b: Option<f64>, x| Some(b.map_or(x, |b| b.min(x))))
            });
        }
        let mut out = format!("# Sweep `{}`\n\n", self.name);
        let seeds = self
            .rows
            .iter()
            .filter_map(|r| r.seed)
            .collect::<std::collections::BTreeSet<_>>();
        if evals {
            let _ = writeln!(
                out,
                "Mean ± std over {} seed{}; ",
                seeds.len(),
                if seeds.len() == 1 { "" } else { "s" }
            );
        }
        let arrows: Vec<String> = metrics
            .iter()
            .map(|m| format!("{m} {}", if higher_is_better(m) { "↑" } else { "↓" }))
            .collect();
        let _ = writeln!(
            out,
            "best value per metric in bold ({}).\n",
            arrows.join(", ")
        );
        let mut header = vec!["point".to_string()];
        header.extend(self.keys.iter().map(|k| format!("`{k}`")));
        if evals {
            header.extend(["sampler", "steps", "seeds"].map(String::from));
        }
        header.extend(metrics.iter().cloned());
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 || i <= self.keys.len() {
                    " --- |"
                } else {
                    " ---: |"
                })
                .collect::<String>()
        );
        for s in &summaries {
            let mut cells = vec![format!("`{}`", s.point)];
            cells.extend(s.values.iter().cloned());
            if evals {
                cells.push(s.sampler.clone().unwrap_or_default());
                cells.push(s.steps.map(|x| x.to_string()).unwrap_or_default());
                cells.push(format!("{}/{}", s.n, s.total));
            }
            for (m, b) in metrics.iter().zip(&best) {
                let cell = match s.metrics.iter().find(|(n, _, _)| n == m) {
                    Some((_, mean, std)) => {
                        let text = format_mean_std(*mean, *std, s.n);
                        if Some(*mean) == *b && summaries.len() > 1 {
                            format!("**{text}**")
                        } else {
                            text
                        }
                    }
                    None => "—".into(),
                };
                cells.push(cell);
            }
            let _ = writeln!(out, "| {} |", cells.join(" | ").replace('\n', " "));
        }
        let floors = self.floor_names();
        if !floors.is_empty() {
            let parts: Vec<String> = floors
                .iter()
                .map(|f| {
                    let xs: Vec<f64> = self
                        .rows
                        .iter()
                        .filter_map(|r| lookup(&r.floor, f))
                        .collect();
                    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                    format!("{f} {}", format_number(mean))
                })
                .collect();
            let _ = writeln!(out, "\nReal-vs-real floor: {}.", parts.join(", "));
        }
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut unfinished: Vec<String> = Vec::new();
        for r in &self.rows {
            match r.status.as_str() {
                "failed" => {
                    let e = r.error.clone().unwrap_or_default().replace('\n', " ");
                    if !failed.iter().any(|(p, err)| *p == r.point && *err == e) {
                        failed.push((r.point.clone(), e));
                    }
                }
                "done" => {}
                _ => {
                    if !unfinished.contains(&r.point) {
                        unfinished.push(r.point.clone());
                    }
                }
            }
        }
        if !failed.is_empty() {
            out += "\n## Failed points\n\n";
            for (p, e) in &failed {
                let _ = writeln!(out, "- `{p}`: {e}");
            }
        }
        if !unfinished.is_empty() {
            out += "\n## Unfinished points\n\n";
            for p in &unfinished {
                let _ = writeln!(out, "- `{p}`");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        point: &str,
        steps: Option<u64>,
        seed: Option<u64>,
        status: &str,
        fid: Option<f64>,
    ) -> ResultRow {
        ResultRow {
            point: point.into(),
            values: vec![point.trim_start_matches("kind-").into()],
            sampler: steps.map(|_| "ddim eta=0".to_string()),
            steps,
            seed,
            status: status.into(),
            metrics: fid
                .map(|f| {
                    vec![
                        ("fid".to_string(), f),
                        ("images_per_sec".to_string(), f * 10.0),
                    ]
                })
                .unwrap_or_default(),
            floor: fid
                .map(|_| vec![("fid".to_string(), 1.0)])
                .unwrap_or_default(),
            error: (status == "failed").then(|| "train: error: bad, \"quoted\"".to_string()),
        }
    }

    fn table() -> ResultsTable {
        ResultsTable {
            name: "t".into(),
            keys: vec!["schedule.kind".into()],
            rows: vec![
                row("kind-linear", Some(10), Some(0), "done", Some(10.0)),
                row("kind-linear", Some(10), Some(1), "done", Some(12.0)),
                row("kind-cosine", Some(10), Some(0), "done", Some(8.0)),
                row("kind-cosine", Some(10), Some(1), "done", Some(9.0)),
                row("kind-sigmoid", Some(10), Some(0), "failed", None),
                row("kind-sigmoid", Some(10), Some(1), "failed", None),
            ],
        }
    }

    #[test]
    fn csv_has_one_row_per_point_setting_and_seed() {
        let csv = table().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "point,schedule.kind,sampler,steps,seed,status,fid,images_per_sec,floor.fid,error"
        );
        assert_eq!(
            lines[1],
            "kind-linear,linear,ddim eta=0,10,0,done,10,100,1,"
        );
        assert_eq!(
            lines[5],
            "kind-sigmoid,sigmoid,ddim eta=0,10,0,failed,,,,\"train: error: bad, \"\"quoted\"\"\""
        );
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn markdown_has_mean_std_bold_best_and_failures() {
        let md = table().to_markdown();
        assert!(
            md.contains(
                "| point | `schedule.kind` | sampler | steps | seeds | fid | images_per_sec |"
            ),
            "{md}"
        );
        // cosine has the lowest FID, linear the highest images/s.
        assert!(md.contains("| `kind-cosine` | cosine | ddim eta=0 | 10 | 2/2 | **8.500 ± 0.707** | 85.00 ± 7.07 |"), "{md}");
        assert!(md.contains("| `kind-linear` | linear | ddim eta=0 | 10 | 2/2 | 11.00 ± 1.41 | **110.0 ± 14.1** |"), "{md}");
        assert!(
            md.contains("| `kind-sigmoid` | sigmoid | ddim eta=0 | 10 | 0/2 | — | — |"),
            "{md}"
        );
        assert!(
            md.contains("## Failed points\n\n- `kind-sigmoid`: train: error: bad"),
            "{md}"
        );
        assert_eq!(
            md.matches("kind-sigmoid`:").count(),
            1,
            "one entry per failure"
        );
        assert!(md.contains("Real-vs-real floor: fid 1.000."), "{md}");
        assert!(md.contains("fid ↓, images_per_sec ↑"), "{md}");
    }

    #[test]
    fn summaries_fold_seeds() {
        let s = table().summaries();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].n, 2);
        assert_eq!(s[0].metrics[0].0, "fid");
        assert!((s[0].metrics[0].1 - 11.0).abs() < 1e-12);
        assert!((s[0].metrics[0].2 - 2f64.sqrt()).abs() < 1e-12);
        assert!(s[2].metrics.is_empty());
    }

    #[test]
    fn numbers_and_errors() {
        assert_eq!(format_number(0.042134), "0.04213");
        assert_eq!(format_number(12.5), "12.50");
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(1.5e-5), "1.500e-5");
        assert_eq!(
            error_summary("step 1/5 loss 0.1\nerror: training x: data examples have shape [2]\n\n"),
            "error: training x: data examples have shape [2]"
        );
        assert_eq!(error_summary("a\nb\n"), "b");
        assert!(higher_is_better("images_per_sec") && !higher_is_better("fid"));
    }
}
