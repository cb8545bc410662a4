//! `difflab sweep`: train and evaluate every point of a sweep file, each as its own
//! `difflab train` / `difflab eval` processes, then write `results.csv`, `results.md` and a
//! plot per metric. Finished points are skipped, unfinished ones resumed, failed ones retried.
//! See `docs/sweeps.md`.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use difflab_lab::sweep::{
    EvalJob, Plan, Point, PointState, PointStatus, ResultsTable, TrainMode, collect, error_summary,
    load_sweep, read_eval_json, read_status, shell_join, slurm_script, write_atomic, write_status,
};
use difflab_pipeline::DeviceSpec;
use difflab_pipeline::checkpoint::read_state;
use difflab_plot::{Chart, Series};
use difflab_train::RunDir;

/// Environment variable naming the program run as `PROGRAM eval …` for evaluations (default:
/// this `difflab`). Lets tests, or a site's own evaluator, stand in for `difflab eval`.
pub const EVAL_PROGRAM_ENV: &str = "DIFFLAB_SWEEP_EVAL_PROGRAM";

/// Lines of a failing command's output kept in the point's status.
const ERROR_TAIL_LINES: usize = 20;

/// Arguments of `difflab sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (YAML; see docs/sweeps.md).
    file: PathBuf,
    /// Output directory (default: the file's `out`, else runs/sweeps/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Points run at the same time, each in its own processes; the cores are split between
    /// them (each child gets `--threads` = cores / N unless `--threads` is given).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// Print the points and the exact commands that would run; run nothing, write nothing.
    #[arg(long, conflicts_with_all = ["emit", "collect"])]
    dry_run: bool,
    /// Write a cluster script instead of running: `slurm` writes OUT/sweep.slurm, a job array
    /// with one point per task.
    #[arg(long, value_enum, conflicts_with_all = ["collect", "point"])]
    emit: Option<Emit>,
    /// Run only point K (0-based, as listed by --dry-run); used by the Slurm array. Does not
    /// write the results tables (run with --collect afterwards).
    #[arg(long, value_name = "K", conflicts_with = "collect")]
    point: Option<usize>,
    /// Only (re)write results.csv, results.md and the plots from the points' files.
    #[arg(long)]
    collect: bool,
}

/// What `--emit` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Emit {
    /// A Slurm job-array script.
    Slurm,
}

/// The global flags passed on to the child processes.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// `--device`.
    pub device: Option<DeviceSpec>,
    /// `--threads`.
    pub threads: Option<usize>,
}

/// How one point went.
#[derive(Debug)]
enum Outcome {
    /// Already complete: no process started.
    Skipped,
    /// Trained and evaluated now.
    Done,
    /// Training or an evaluation failed (its one-line error).
    Failed(String),
}

/// Starts the points' processes.
struct Runner<'a> {
    plan: &'a Plan,
    exe: PathBuf,
    eval_program: PathBuf,
    /// Global flags before the subcommand (`--threads T`, `--device D`).
    global_args: Vec<String>,
    threads: usize,
    stop: Arc<AtomicBool>,
}

/// The run's latest checkpoint step and its last loss.
fn latest_step(run_dir: &Path) -> Option<(u64, Option<f64>)> {
    let dir = RunDir::new(run_dir).checkpoints().latest().ok()??;
    let state = read_state(&dir).ok()?;
    Some((state["step"].as_u64()?, state["loss"].as_f64()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Runner<'_> {
    /// How `point`'s training would start now, or `None` when it is trained.
    fn train_mode(&self, point: &Point) -> Option<TrainMode> {
        let run_dir = self.plan.run_dir(point);
        match latest_step(&run_dir) {
            Some((step, _)) if step >= point.config.training.steps => None,
            Some(_) => Some(TrainMode::Resume),
            None if RunDir::new(&run_dir).is_used() => Some(TrainMode::Overwrite),
            None => Some(TrainMode::Fresh),
        }
    }

    fn pending_evals(&self, point: &Point) -> Vec<&EvalJob> {
        let run_dir = self.plan.run_dir(point);
        self.plan
            .evals
            .iter()
            .filter(|j| !j.result_file(&run_dir).exists())
            .collect()
    }

    fn full_args(&self, args: &[String]) -> Vec<String> {
        self.global_args.iter().chain(args).cloned().collect()
    }

    /// Run `program args` with output appended to `log`; on failure, the error is the exit
    /// status and the end of this run's output.
    fn spawn(&self, program: &Path, args: &[String], log: &Path) -> Result<(), String> {
        let args = self.full_args(args);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let start = file.seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = writeln!(file, "$ {}", shell_join(program, &args));
        let (out, err) = match (file.try_clone(), file.try_clone()) {
            (Ok(o), Ok(e)) => (o, e),
            _ => return Err(format!("cannot share {}", log.display())),
        };
        let status = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("OMP_NUM_THREADS", self.threads.to_string())
            .env("MKL_NUM_THREADS", self.threads.to_string())
            .status()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        if status.success() {
            return Ok(());
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.read_to_string(&mut text);
        }
        Err(format!(
            "{}\n(exit status: {status}; full output in {})",
            tail(&text, ERROR_TAIL_LINES),
            log.display()
        ))
    }

    /// Train and evaluate one point as needed; record its status.
    fn run_point(&self, point: &Point, label: &str) -> Outcome {
        let run_dir = self.plan.run_dir(point);
        let mode = self.train_mode(point);
        let pending = self.pending_evals(point);
        let previous = read_status(&run_dir);
        if mode.is_none() && pending.is_empty() {
            if !previous
                .as_ref()
                .is_some_and(|s| s.state == PointState::Done)
            {
                // Complete on disk but not recorded (the sweep stopped right after): record it.
                let mut status = PointStatus::started(previous);
                status.state = PointState::Done;
                status.phase = "done".into();
                if let Some((step, loss)) = latest_step(&run_dir) {
                    status.step = step;
                    status.final_loss = loss.or(status.final_loss);
                }
                status.finished_at = Some(difflab_lab::sweep::status::unix_now());
                if let Err(e) = write_status(&run_dir, &status) {
                    return Outcome::Failed(e.to_string());
                }
            }
            eprintln!("{label}: complete, skipped");
            return Outcome::Skipped;
        }
        if let Err(e) = std::fs::create_dir_all(&run_dir) {
            let e = format!("cannot create {}: {e}", run_dir.display());
            eprintln!("{label}: FAILED: {e}");
            return Outcome::Failed(e);
        }
        let started = Instant::now();
        let mut status = PointStatus::started(previous);
        let log = run_dir.join("sweep.log");
        let fail = |mut status: PointStatus, phase: String, error: String| {
            let summary = format!("{phase}: {}", error_summary(&error));
            eprintln!("{label}: FAILED ({summary})");
            status.state = PointState::Failed;
            status.phase = phase;
            status.error = Some(error);
            status.finished_at = Some(difflab_lab::sweep::status::unix_now());
            let _ = write_status(&run_dir, &status);
            Outcome::Failed(summary)
        };
        if let Err(e) = write_status(&run_dir, &status) {
            return fail(status, "train".into(), e.to_string());
        }
        let batch = point.config.training.batch_size as f64;
        let steps = point.config.training.steps;
        if let Some(mode) = mode {
            let before = latest_step(&run_dir).map_or(0, |l| l.0);
            eprintln!(
                "{label}: training ({})",
                match mode {
                    TrainMode::Fresh => "from scratch".to_string(),
                    TrainMode::Resume => format!("resuming at step {before}"),
                    TrainMode::Overwrite => "starting over: no checkpoint".to_string(),
                }
            );
            let t0 = Instant::now();
            let result = self.spawn(&self.exe, &self.plan.train_args(point, mode), &log);
            status.train_seconds += t0.elapsed().as_secs_f64();
            let after = latest_step(&run_dir);
            if let Some((step, loss)) = after {
                status.trained_steps += step.saturating_sub(before);
                status.step = step;
                status.final_loss = loss;
            }
            if status.train_seconds > 0.0 && status.trained_steps > 0 {
                status.images_per_sec =
                    Some(status.trained_steps as f64 * batch / status.train_seconds);
            }
            if let Err(e) = result {
                return fail(status, "train".into(), e);
            }
            if status.step < steps {
                let e = format!(
                    "training stopped at step {} of {steps} (interrupted?); rerun the sweep to resume",
                    status.step
                );
                return fail(status, "train".into(), e);
            }
        } else if let Some((step, loss)) = latest_step(&run_dir) {
            status.step = step;
            status.final_loss = loss.or(status.final_loss);
        }
        for job in pending {
            let phase = format!("eval {}", job.tag());
            if self.stop.load(Ordering::SeqCst) {
                return fail(status, phase, "interrupted before this evaluation".into());
            }
            eprintln!("{label}: {phase}");
            status.phase = phase.clone();
            let _ = write_status(&run_dir, &status);
            if let Err(e) = self.spawn(&self.eval_program, &job.args(&run_dir), &log) {
                return fail(status, phase, e);
            }
            match read_eval_json(&job.result_file(&run_dir)) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let e = format!("wrote no {}", job.result_file(&run_dir).display());
                    return fail(status, phase, e);
                }
                Err(e) => return fail(status, phase, e),
            }
        }
        status.state = PointState::Done;
        status.phase = "done".into();
        status.error = None;
        status.finished_at = Some(difflab_lab::sweep::status::unix_now());
        if let Err(e) = write_status(&run_dir, &status) {
            return Outcome::Failed(e.to_string());
        }
        eprintln!("{label}: done in {:.1}s", started.elapsed().as_secs_f64());
        Outcome::Done
    }

    /// What `--dry-run` prints for one point.
    fn describe(&self, point: &Point) -> String {
        let values: Vec<String> = point
            .values
            .iter()
            .map(|(k, v)| format!("{k}={}", difflab_lab::sweep::plan::value_text(v)))
            .collect();
        let mut s = format!("[{}] {}  {}\n", point.index, point.name, values.join(" "));
        let run_dir = self.plan.run_dir(point);
        let mode = self.train_mode(point);
        let pending = self.pending_evals(point);
        if mode.is_none() && pending.is_empty() {
            s += "    complete: nothing to run\n";
        }
        if let Some(mode) = mode {
            let args = self.full_args(&self.plan.train_args(point, mode));
            s += &format!("    {}\n", shell_join(&self.exe, &args));
        }
        for job in pending {
            let args = self.full_args(&job.args(&run_dir));
            s += &format!("    {}\n", shell_join(&self.eval_program, &args));
        }
        s
    }
}

/// A metric name as a file name.
fn file_stem(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One chart per metric: metric against sampling steps with a line per point and sampler when
/// the sweep evaluates several step counts, else one dot per point.
fn charts(table: &ResultsTable) -> Vec<(String, Chart)> {
    let summaries = table.summaries();
    let steps: BTreeSet<u64> = summaries.iter().filter_map(|s| s.steps).collect();
    let mut charts = Vec::new();
    for metric in table.metric_names() {
        let value = |s: &difflab_lab::sweep::Summary| {
            s.metrics
                .iter()
                .find(|(n, _, _)| *n == metric)
                .map(|(_, mean, _)| *mean)
        };
        let chart = if steps.len() > 1 {
            let mut series: Vec<Series> = Vec::new();
            for s in &summaries {
                let (Some(x), Some(y)) = (s.steps, value(s)) else {
                    continue;
                };
                let name = format!("{} {}", s.point, s.sampler.clone().unwrap_or_default());
                match series.iter_mut().find(|se| se.name == name) {
                    Some(se) => se.points.push((x as f64, y)),
                    None => series.push(Series::new(name, vec![(x as f64, y)])),
                }
            }
            let (lo, hi) = (*steps.first().unwrap_or(&1), *steps.last().unwrap_or(&1));
            let mut chart = Chart::new(format!("{metric} vs sampling steps"))
                .x_label("sampling steps")
                .y_label(&metric);
            if lo > 0 && hi >= 10 * lo {
                chart = chart.log_x();
            }
            for se in series {
                chart = chart.series(se);
            }
            chart
        } else {
            let mut chart = Chart::new(format!("{metric} per point"))
                .x_label("point")
                .y_label(&metric);
            for (i, s) in summaries.iter().enumerate() {
                if let Some(y) = value(s) {
                    let name = match &s.sampler {
                        Some(sampler) => format!("{} {sampler}", s.point),
                        None => s.point.clone(),
                    };
                    // A short level mark per point (a lone point renders as a tiny dot).
                    let x = i as f64;
                    chart = chart.series(Series::new(name, vec![(x - 0.3, y), (x + 0.3, y)]));
                }
            }
            chart
        };
        charts.push((metric, chart));
    }
    charts
}

/// Write results.csv, results.md and the plots; returns the table.
fn write_outputs(plan: &Plan) -> Result<ResultsTable> {
    let out = &plan.sweep.out;
    let table = collect(plan);
    write_atomic(&out.join("results.csv"), &table.to_csv())?;
    write_atomic(&out.join("results.md"), &table.to_markdown())?;
    for (metric, chart) in charts(&table) {
        let path = out.join(format!("{}.png", file_stem(&metric)));
        if let Err(e) = chart.save_png(&path, 800, 500) {
            eprintln!("warning: no plot for {metric}: {e}");
        }
    }
    Ok(table)
}

/// Run the command.
pub fn run(args: &SweepArgs, globals: &Globals) -> Result<()> {
    let sweep = load_sweep(&args.file, args.out.as_deref())?;
    let plan = Plan::build(&sweep)?;
    let out = plan.sweep.out.clone();
    if let Some(k) = args.point
        && k >= plan.points.len()
    {
        bail!(
            "--point {k}: the sweep has {} points (0..{})",
            plan.points.len(),
            plan.points.len().saturating_sub(1)
        );
    }
    let jobs = args.jobs as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = globals
        .threads
        .unwrap_or_else(|| (cores / jobs.min(plan.points.len()).max(1)).max(1));
    let mut global_args = vec!["--threads".to_string(), threads.to_string()];
    if let Some(device) = globals.device {
        global_args.extend(["--device".to_string(), device.to_string()]);
    }
    let exe = std::env::current_exe().context("locating the difflab executable")?;
    let eval_program = std::env::var_os(EVAL_PROGRAM_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.clone());
    let runner = Runner {
        plan: &plan,
        exe: exe.clone(),
        eval_program,
        global_args,
        threads,
        stop: Arc::new(AtomicBool::new(false)),
    };

    if args.dry_run {
        println!(
            "sweep {}: {} point{} × {} evaluation{} each, out {}",
            plan.sweep.spec.name,
            plan.points.len(),
            if plan.points.len() == 1 { "" } else { "s" },
            plan.evals.len(),
            if plan.evals.len() == 1 { "" } else { "s" },
            out.display()
        );
        for point in &plan.points {
            print!("{}", runner.describe(point));
        }
        return Ok(());
    }

    // The script is checked before anything is written.
    let script = match args.emit {
        Some(Emit::Slurm) => {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            let cwd = std::env::current_dir().context("reading the working directory")?;
            Some(
                slurm_script(&plan, &abs(&exe), &abs(&args.file), &abs(&out), &cwd)
                    .map_err(|e| anyhow::anyhow!("--emit slurm: {e}"))?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let plan_json = serde_json::to_string_pretty(&plan.to_json()).expect("plans serialise");
    write_atomic(&out.join("sweep.json"), &plan_json)?;

    if let Some(script) = script {
        // Slurm opens the task logs before the script runs: their folder must exist now.
        let logs = out.join("slurm");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let path = out.join("sweep.slurm");
        write_atomic(&path, &script)?;
        println!("{}", path.display());
        eprintln!(
            "wrote {} ({} array tasks); submit with: sbatch {}",
            path.display(),
            plan.points.len(),
            path.display()
        );
        return Ok(());
    }

    if !args.collect {
        let flag = runner.stop.clone();
        // Children get the same Ctrl-C and checkpoint themselves; the sweep starts no more.
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: stopped; running points were told to checkpoint");
                difflab_ffi::exit_now(130);
            }
            eprintln!("\ninterrupt: letting running points checkpoint; no new points start");
        });
        let points: Vec<&Point> = match args.point {
            Some(k) => vec![&plan.points[k]],
            None => plan.points.iter().collect(),
        };
        let total = plan.points.len();
        let next = AtomicUsize::new(0);
        let outcomes: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
        eprintln!(
            "sweep {}: {} point{} to check, {} at a time, {threads} thread{} each",
            plan.sweep.spec.name,
            points.len(),
            if points.len() == 1 { "" } else { "s" },
            jobs.min(points.len()),
            if threads == 1 { "" } else { "s" }
        );
        std::thread::scope(|scope| {
            for _ in 0..jobs.min(points.len()) {
                scope.spawn(|| {
                    loop {
                        if runner.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(point) = points.get(i) else { break };
                        let label = format!("[{}] {}", point.index, point.name);
                        let outcome = runner.run_point(point, &label);
                        outcomes.lock().expect("no worker panics").push(outcome);
                    }
                });
            }
        });
        let outcomes = outcomes.into_inner().expect("no worker panics");
        let ran = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Done))
            .count();
        let skipped = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Skipped))
            .count();
        let failed: Vec<&String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Failed(e) => Some(e),
                _ => None,
            })
            .collect();
        let not_started = points.len() - outcomes.len();
        eprintln!(
            "sweep {}: {} run, {skipped} skipped (complete), {} failed{}",
            plan.sweep.spec.name,
            ran,
            failed.len(),
            if not_started > 0 {
                format!(", {not_started} not started (interrupted)")
            } else {
                String::new()
            }
        );
        if args.point.is_some() {
            if let Some(e) = failed.first() {
                bail!("point {}: {e}", args.point.unwrap_or_default());
            }
            return Ok(());
        }
        let table = write_outputs(&plan)?;
        report_outputs(&out, &table);
        if !failed.is_empty() {
            bail!(
                "{} of {total} points failed (errors in {})",
                failed.len(),
                out.join("results.md").display()
            );
        }
        if not_started > 0 {
            bail!("interrupted: rerun the sweep to resume");
        }
        return Ok(());
    }
    let table = write_outputs(&plan)?;
    report_outputs(&out, &table);
    Ok(())
}

fn report_outputs(out: &Path, table: &ResultsTable) {
    eprintln!(
        "results: results.csv, results.md and {} plot{} in {}",
        table.metric_names().len(),
        if table.metric_names().len() == 1 {
            ""
        } else {
            "s"
        },
        out.display()
    );
}
