//! `--emit slurm`: a job-array script that runs one point per array task.

use std::fmt::Write as _;
use std::path::Path;

use super::plan::{Plan, shell_quote};

/// The `sweep.slurm` script for `plan`: `#SBATCH --array=0-(P-1)`, each task running
/// `difflab sweep FILE --out OUT --point $SLURM_ARRAY_TASK_ID` from `workdir` with the
/// executable `exe`. Paths should be absolute (the job runs wherever Slurm starts it).
pub fn slurm_script(
    plan: &Plan,
    exe: &Path,
    sweep_file: &Path,
    out: &Path,
    workdir: &Path,
) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let n = plan.points.len();
    let name = &plan.sweep.spec.name;
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# difflab sweep `{name}`: {n} points, one per array task."
    );
    let _ = writeln!(
        s,
        "# Written by `difflab sweep --emit slurm`; add your cluster's partition, GPUs and time limit."
    );
    let _ = writeln!(s, "#SBATCH --job-name=difflab-{name}");
    let _ = writeln!(s, "#SBATCH --array=0-{}", n.saturating_sub(1));
    let _ = writeln!(s, "#SBATCH --cpus-per-task=4");
    let _ = writeln!(s, "#SBATCH --output={}/slurm/%A_%a.out", out.display());
    let _ = writeln!(s, "#");
    let _ = writeln!(s, "# Submit:   sbatch {}", q(&out.join("sweep.slurm")));
    let _ = writeln!(
        s,
        "# Tables:   {} sweep {} --out {} --collect   (after the array finished)",
        q(exe),
        q(sweep_file),
        q(out)
    );
    let _ = writeln!(s, "# Points:");
    for p in &plan.points {
        let _ = writeln!(s, "#   {:>3}  {}", p.index, p.name);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "mkdir -p {}", q(&out.join("slurm")));
    let _ = writeln!(s, "cd {}", q(workdir));
    let _ = writeln!(
        s,
        "exec {} --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" sweep {} --out {} --point \"$SLURM_ARRAY_TASK_ID\"",
        q(exe),
        q(sweep_file),
        q(out)
    );
    s
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
        let script = slurm_script(
            &plan,
            Path::new("/opt/difflab"),
            &file,
            &dir.join("out"),
            Path::new("/work dir"),
        );
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("#SBATCH --array=0-3\n"), "{script}");
        assert!(
            script.contains("#     3  objective-v_kind-cosine\n"),
            "{script}"
        );
        assert!(script.contains("cd '/work dir'\n"), "{script}");
        let last = script.lines().last().unwrap();
        assert_eq!(
            last,
            format!(
                "exec /opt/difflab --threads \"${{SLURM_CPUS_PER_TASK:-1}}\" sweep {} --out {} --point \"$SLURM_ARRAY_TASK_ID\"",
                file.display(),
                dir.join("out").display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
