//! `difflab sweep --emit slurm` with hostile paths: spaces, `$(…)`, backticks, quotes, `%` and
//! globs in the executable's, the sweep file's, the output's and the working directory's
//! paths stay data. The script passes `bash -n` and `shellcheck`, and run as Slurm would run
//! it (with a stand-in for difflab) it passes every path through verbatim and runs nothing
//! else.

#[path = "../../../tests/support/needs.rs"]
mod needs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use difflab_lab::sweep::{Plan, parse_sweep, slurm_script};

/// A folder name an attacker would choose: it runs `touch PWNED` if anything evaluates it.
fn hostile(dir: &Path, tag: &str) -> PathBuf {
    let pwned = dir.join("PWNED");
    dir.join(format!(
        "{tag} $(touch {p}) `touch {p}` 'q' \"d\" ; * %j $HOME",
        p = pwned.display()
    ))
}

#[test]
fn hostile_paths_stay_data_in_the_slurm_script() {
    let root = std::env::temp_dir().join(format!("difflab-slurm-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    // The sweep file, its base config, the output folder and the working directory.
    let sweep_dir = hostile(&root, "sweeps");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/toy2d.yaml"),
        sweep_dir.join("toy2d.yaml"),
    )
    .unwrap();
    let file = sweep_dir.join("s.yaml");
    let text = "name: s\nbase: toy2d.yaml\ngrid: {objective: [eps, v]}\n";
    std::fs::write(&file, text).unwrap();
    let workdir = hostile(&root, "work");
    std::fs::create_dir_all(&workdir).unwrap();
    // The output folder also goes into the `#SBATCH --output` line, which Slurm parses itself:
    // there a double quote or a backslash is refused (tested in the unit tests), the rest stays.
    let out = PathBuf::from(hostile(&root, "out").to_str().unwrap().replace('"', ""));

    // A stand-in for difflab at a hostile path: records its arguments, one per line.
    let bin = hostile(&root, "bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("difflab");
    let args_file = root.join("args.txt");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$PWD\" \"$@\" > '{}'\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let sweep = parse_sweep(text, &file, Some(&out)).unwrap();
    let plan = Plan::build(&sweep).unwrap();
    let script = slurm_script(&plan, &exe, &file, &out, &workdir).unwrap();
    let path = root.join("sweep.slurm");
    std::fs::write(&path, &script).unwrap();

    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let shellcheck = Command::new("shellcheck").arg("--version").output();
    if needs::available(
        "shellcheck (apt-get install shellcheck)",
        shellcheck.is_ok(),
    ) {
        let lint = Command::new("shellcheck").arg(&path).output().unwrap();
        assert!(
            lint.status.success(),
            "shellcheck:\n{}\n{script}",
            String::from_utf8_lossy(&lint.stdout)
        );
    }

    // Run it as a Slurm array task would.
    let ran = Command::new("bash")
        .arg(&path)
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_CPUS_PER_TASK", "3")
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let args = std::fs::read_to_string(&args_file).unwrap();
    let expected = [
        workdir.to_str().unwrap(),
        "--threads",
        "3",
        "sweep",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--point",
        "1",
    ]
    .map(|a| format!("{a}\n"))
    .concat();
    assert_eq!(args, expected);
    assert!(
        !root.join("PWNED").exists(),
        "the script ran a command from a path"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
