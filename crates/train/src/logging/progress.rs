//! Progress display for the training loop.
//!
//! On a terminal (stderr) it is an indicatif bar with step/total, loss, learning rate, it/s
//! and ETA; elsewhere (CI logs, `nohup`, piped output) it is a plain line every `plain_every`
//! steps or [`PLAIN_INTERVAL`], whichever comes first:
//!
//! ```text
//! step 120/1000  loss 0.0421  lr 2.0e-4  3.1 it/s  eta 4m42s
//! ```

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Longest time between two plain progress lines, whatever `plain_every` says.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

/// The it/s shown is measured over about this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(20);

/// Progress of a training run from `start_step` (non-zero on resume) to `total_steps`.
#[derive(Debug)]
pub struct TrainProgress {
    total: u64,
    plain_every: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    start_step: u64,
    /// (time, step) anchors for the rate, oldest first, at least a quarter second apart.
    samples: VecDeque<(Instant, u64)>,
    /// The most recent (time, step).
    latest: (Instant, u64),
    last_step: u64,
    last_print: Instant,
    last_printed_step: Option<u64>,
    finished: bool,
    /// Plain lines go here instead of stderr (tests).
    captured: Option<Vec<String>>,
}

impl TrainProgress {
    /// A progress display for steps `start_step..=total_steps`. It draws a bar when stderr is
    /// a terminal; otherwise it prints a line every `plain_every` steps (0: only every
    /// [`PLAIN_INTERVAL`]) and at the last step.
    pub fn new(total_steps: u64, start_step: u64, plain_every: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(total_steps)
                .with_style(style)
                .with_position(start_step.min(total_steps))
        });
        Self::with_bar(total_steps, start_step, plain_every, bar)
    }

    fn with_bar(total: u64, start_step: u64, plain_every: u64, bar: Option<ProgressBar>) -> Self {
        let now = Instant::now();
        Self {
            total,
            plain_every,
            bar,
            started: now,
            start_step,
            samples: VecDeque::from([(now, start_step)]),
            latest: (now, start_step),
            last_step: start_step,
            last_print: now,
            last_printed_step: None,
            finished: false,
            captured: None,
        }
    }

    /// Records that `step` is done with this loss and learning rate, and redraws the bar or
    /// prints a plain line when one is due.
    pub fn update(&mut self, step: u64, loss: f64, lr: f64) {
        let now = Instant::now();
        self.last_step = step;
        self.record_sample(now, step);
        let rate = self.rate();
        let tail = status_tail(loss, lr, rate, self.eta(step, rate));
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(tail);
            return;
        }
        let due_by_steps = self.plain_every > 0 && step.is_multiple_of(self.plain_every);
        let due = step >= self.total
            || due_by_steps
            || now.duration_since(self.last_print) >= PLAIN_INTERVAL;
        if due && self.last_printed_step != Some(step) {
            self.last_print = now;
            self.last_printed_step = Some(step);
            self.emit(format!("step {step}/{}  {tail}", self.total));
        }
    }

    /// Prints a line (an evaluation result, a checkpoint path) without breaking the bar.
    pub fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => self.emit(text.to_owned()),
        }
    }

    /// Ends the display: the bar stays on screen at its last state; plain output gets a
    /// summary line. Calling it twice does nothing the second time.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(bar) = &self.bar {
            bar.finish();
            return;
        }
        let elapsed = self.started.elapsed();
        let done = self.last_step.saturating_sub(self.start_step);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        self.emit(format!(
            "finished at step {}/{}: {done} steps in {} ({})",
            self.last_step,
            self.total,
            format_duration(secs),
            format_rate(Some(rate))
        ));
    }

    fn emit(&mut self, line: String) {
        match &mut self.captured {
            Some(lines) => lines.push(line),
            None => eprintln!("{line}"),
        }
    }

    fn record_sample(&mut self, now: Instant, step: u64) {
        if step < self.latest.1 {
            // Steps went backwards (a restarted loop): measure afresh.
            self.samples.clear();
        }
        self.latest = (now, step);
        let spaced = self
            .samples
            .back()
            .is_none_or(|&(t, _)| now.duration_since(t) >= Duration::from_millis(250));
        if spaced {
            self.samples.push_back((now, step));
        }
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// Steps per second over the recent window, once there is something to measure.
    fn rate(&self) -> Option<f64> {
        let &(t0, s0) = self.samples.front()?;
        let (t1, s1) = self.latest;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs > 0.0 && s1 > s0).then(|| (s1 - s0) as f64 / secs)
    }

    fn eta(&self, step: u64, rate: Option<f64>) -> Option<f64> {
        let rate = rate.filter(|r| *r > 0.0)?;
        Some(self.total.saturating_sub(step) as f64 / rate)
    }
}

/// `loss 0.0421  lr 2.0e-4  3.1 it/s  eta 4m42s`
fn status_tail(loss: f64, lr: f64, rate: Option<f64>, eta: Option<f64>) -> String {
    format!(
        "loss {}  lr {lr:.1e}  {}  eta {}",
        format_loss(loss),
        format_rate(rate),
        eta.map_or_else(|| "?".to_owned(), format_duration)
    )
}

fn format_loss(loss: f64) -> String {
    if loss == 0.0 || (loss.is_finite() && (1e-3..1e4).contains(&loss.abs())) {
        format!("{loss:.4}")
    } else {
        format!("{loss:.3e}")
    }
}

fn format_rate(rate: Option<f64>) -> String {
    match rate {
        None => "- it/s".to_owned(),
        Some(r) if r >= 100.0 => format!("{r:.0} it/s"),
        Some(r) if r >= 1.0 => format!("{r:.1} it/s"),
        Some(r) => format!("{r:.2} it/s"),
    }
}

/// `42s`, `4m42s`, `1h02m`.
fn format_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".to_owned();
    }
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(total: u64, start: u64, every: u64) -> TrainProgress {
        let mut p = TrainProgress::with_bar(total, start, every, None);
        p.captured = Some(Vec::new());
        p
    }

    #[test]
    fn formats_match_the_documented_line() {
        assert_eq!(
            status_tail(0.0421, 2e-4, Some(3.1), Some(282.0)),
            "loss 0.0421  lr 2.0e-4  3.1 it/s  eta 4m42s"
        );
        assert_eq!(format_duration(42.4), "42s");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_loss(1.5e-5), "1.500e-5");
        assert_eq!(format_loss(f64::NAN), "NaN");
        assert_eq!(format_rate(Some(460.2)), "460 it/s");
        assert_eq!(format_rate(None), "- it/s");
    }

    #[test]
    fn plain_mode_prints_every_n_steps_and_the_last() {
        let mut p = plain(25, 0, 10);
        for step in 1..=25 {
            p.update(step, 0.5, 1e-3);
        }
        p.message("checkpoint saved");
        p.finish();
        p.finish();
        let lines = p.captured.take().unwrap();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[0].starts_with("step 10/25  loss 0.5000  lr 1.0e-3  "),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("step 20/25  "));
        assert!(lines[2].starts_with("step 25/25  "));
        assert_eq!(lines[3], "checkpoint saved");
        assert!(
            lines[4].starts_with("finished at step 25/25: 25 steps in "),
            "{}",
            lines[4]
        );
    }

    #[test]
    fn resumed_run_counts_from_start_step() {
        let mut p = plain(100, 90, 5);
        p.update(95, 0.1, 1e-4);
        p.update(95, 0.1, 1e-4);
        p.update(100, 0.1, 1e-4);
        p.finish();
        let lines = p.captured.take().unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[2].contains(": 10 steps in "), "{}", lines[2]);
    }

    #[test]
    fn rate_and_eta_from_samples() {
        let mut p = plain(1000, 0, 0);
        let t0 = p.samples[0].0;
        p.samples.clear();
        p.record_sample(t0, 0);
        p.record_sample(t0 + Duration::from_secs(10), 50);
        let rate = p.rate().unwrap();
        assert!((rate - 5.0).abs() < 1e-9);
        assert!((p.eta(50, Some(rate)).unwrap() - 190.0).abs() < 1e-9);
    }
}
