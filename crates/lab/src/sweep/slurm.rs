//! `--emit slurm`: a job-array script that runs one point per array task.

use std::fmt::Write as _;
use std::path::Path;

use super::plan::{Plan, shell_quote};

/// A path that can go into the script: no control characters (a newline would end the quoted
/// line in a reader's eyes, and in `#SBATCH` lines Slurm's), valid UTF-8. `what` names it.
fn script_path(what: &str, path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or_else(|| {
        format!(
            "{what} {} is not valid UTF-8; a Slurm script cannot name it",
            path.display()
        )
    })?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} {text:?} contains the control character {c:?}; rename it (a Slurm script cannot hold it safely)"
        ));
    }
    Ok(text.to_string())
}

/// The `#SBATCH --output` value: double-quoted for Slurm's own parser, with `%` doubled (Slurm
/// would read `%j`, `%x`, … as patterns). `"` and `\` cannot be written there safely.
fn sbatch_output(out: &str) -> Result<String, String> {
    if out.contains(['"', '\\']) {
        return Err(format!(
            "output folder {out:?} contains a '\"' or a backslash, which an #SBATCH line cannot hold; use another --out"
        ));
    }
    Ok(format!("\"{}/slurm/%A_%a.out\"", out.replace('%', "%%")))
}

/// The `sweep.slurm` script for `plan`: `#SBATCH --array=0-(P-1)`, each task running
/// `difflab sweep FILE --out OUT --point $SLURM_ARRAY_TASK_ID` from `workdir` with the
/// executable `exe`. Paths should be absolute (the job runs wherever Slurm starts it). Every
/// path is shell-quoted (spaces, `$`, backticks and quotes stay data); one with a control
/// character is refused with an error naming it. Slurm opens `OUT/slurm/` for the task logs
/// before the script runs: the caller creates it when it writes the script.
pub fn slurm_script(
    plan: &Plan,
    exe: &Path,
    sweep_file: &Path,
    out: &Path,
    workdir: &Path,
) -> Result<String, String> {
    let exe = shell_quote(&script_path("the difflab executable", exe)?);
    let file = shell_quote(&script_path("sweep file", sweep_file)?);
    let out_text = script_path("output folder", out)?;
    let output = sbatch_output(&out_text)?;
    let out_q = shell_quote(&out_text);
    let workdir = shell_quote(&script_path("working directory", workdir)?);
    let script_q = shell_quote(&format!("{out_text}/sweep.slurm"));
    let n = plan.points.len();
    // The sweep and point names are plain names (checked when the sweep file was read).
    let name = &plan.sweep.spec.name;
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(s, "#SBATCH --job-name=difflab-{name}");
    let _ = writeln!(s, "#SBATCH --array=0-{}", n.saturating_sub(1));
    let _ = writeln!(s, "#SBATCH --cpus-per-task=4");
    let _ = writeln!(s, "#SBATCH --output={output}");
    let _ = writeln!(s, "#");
    let _ = writeln!(s, "# difflab sweep {name}: {n} points, one per array task.");
    let _ = writeln!(
        s,
        "# Written by difflab sweep --emit slurm; add your cluster's partition, GPUs and time limit."
    );
    let _ = writeln!(s, "# Submit:   sbatch {script_q}");
    let _ = writeln!(
        s,
        "# Tables:   {exe} sweep {file} --out {out_q} --collect   (after the array finished)"
    );
    let _ = writeln!(s, "# Points:");
    for p in &plan.points {
        let _ = writeln!(s, "#   {:>3}  {}", p.index, p.name);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "# Paths are single-quoted on purpose: a '$' or a backtick in one is part of its name."
    );
    let _ = writeln!(s, "# shellcheck disable=SC2016");
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "cd {workdir}");
    let _ = writeln!(
        s,
        "exec {exe} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" sweep {file} --out {out_q} --point \"$SLURM_ARRAY_TASK_ID\""
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::spec::parse_sweep;
    use super::*;

    #[test]
    fn one_array_task_per_point() {
        let dir = std::env::temp_dir().join(format!("difflab-sweep-slurm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/toy2d.yaml"),
            dir.join("toy2d.yaml"),
        )
        .unwrap();
        let file = dir.join("s.yaml");
        let text = "name: s\nbase: toy2d.yaml\ngrid: {objective: [eps, v], schedule.kind: [linear, cosine]}\n";
        let sweep = parse_sweep(text, &file, Some(&dir.join("out"))).unwrap();
        let plan = Plan::build(&sweep).unwrap();
        let out = dir.join("out 100%");
        let script = slurm_script(
            &plan,
            Path::new("/opt/difflab"),
            &file,
            &out,
            Path::new("/work dir"),
        )
        .unwrap();
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("#SBATCH --array=0-3\n"), "{script}");
        let output = format!(
            "#SBATCH --output=\"{}/out 100%%/slurm/%A_%a.out\"\n",
            dir.display()
        );
        assert!(script.contains(&output), "{script}");
        assert!(
            script.contains("#     3  objective-v_kind-cosine\n"),
            "{script}"
        );
        assert!(script.contains("cd '/work dir'\n"), "{script}");
        let last = script.lines().last().unwrap();
        assert_eq!(
            last,
            format!(
                "exec /opt/difflab --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" sweep {} --out '{}' --point \"$SLURM_ARRAY_TASK_ID\"",
                file.display(),
                out.display()
            )
        );
        // A control character anywhere, or a quote in the #SBATCH path, is refused by name.
        let err = slurm_script(
            &plan,
            Path::new("/opt/diff\nlab"),
            &file,
            &out,
            Path::new("/w"),
        )
        .unwrap_err();
        assert!(
            err.contains("the difflab executable") && err.contains("\\n"),
            "{err}"
        );
        let err = slurm_script(
            &plan,
            Path::new("/opt/difflab"),
            &file,
            &dir.join("a\"b"),
            Path::new("/w"),
        )
        .unwrap_err();
        assert!(err.contains("output folder"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
