//! SIGKILL at seeded random moments of a run that writes a checkpoint
//! every step and saves its model at the end: whatever moment the process
//! dies at, every checkpoint file in the folder and the model file (when
//! it exists) load, and `--resume` continues from the newest checkpoint.
//! The files are written to a temporary name, synced, renamed, and the
//! folder synced (`model::write_atomic`), so no moment leaves half a file
//! under the real name.

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn args<'a>(ck: &'a str, save: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--hidden",
        "64",
        "--epochs",
        "4",
        "--batch",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--checkpoint-dir",
        ck,
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--save",
        save,
        "-q",
    ]
}

/// Every checkpoint in `ck` loads, and the model at `save` if it exists;
/// returns the number of checkpoints.
fn check_files(ck: &Path, save: &Path, what: &str) -> usize {
    let files = wgtrain::checkpoint::list(ck).unwrap_or_default();
    for f in &files {
        wgtrain::checkpoint::read(f).unwrap_or_else(|e| panic!("{what}: {} does not load: {e}", f.display()));
    }
    if save.exists() {
        wgtrain::model::AnyModel::load(save).unwrap_or_else(|e| panic!("{what}: the model does not load: {e}"));
    }
    files.len()
}

#[test]
fn sigkill_at_random_moments_leaves_only_whole_files() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_wgtrain");
    // How long a whole run takes here, so the kills spread over all of it.
    let (ck, save) = (dir.path().join("ck0"), dir.path().join("m0.safetensors"));
    let t0 = Instant::now();
    let o = Command::new(bin)
        .args(args(ck.to_str().unwrap(), save.to_str().unwrap()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = t0.elapsed();
    assert!(check_files(&ck, &save, "uninterrupted") > 0);

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut killed_mid_run = 0;
    for i in 1..=16 {
        let ck = dir.path().join(format!("ck{i}"));
        let save = dir.path().join(format!("m{i}.safetensors"));
        let mut child = Command::new(bin)
            .args(args(ck.to_str().unwrap(), save.to_str().unwrap()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = whole.mul_f64(rng.random_range(0.05..1.1));
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_run += 1;
        }
        let what = format!("killed after {at:?}");
        let n = check_files(&ck, &save, &what);
        // The newest checkpoint continues the run to its end.
        if n > 0 && !save.exists() {
            let o = Command::new(bin)
                .args(["train", "--resume", ck.to_str().unwrap(), "-q"])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{what}: resume failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            check_files(&ck, &save, &format!("{what}, resumed"));
            assert!(save.exists(), "{what}: the resumed run saved no model");
        }
    }
    assert!(
        killed_mid_run >= 8,
        "only {killed_mid_run} of 16 runs were killed before they ended"
    );
}
