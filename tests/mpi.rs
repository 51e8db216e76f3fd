//! `wgtrain train --distributed` under OpenMPI's mpirun on loopback (the
//! cargo feature `mpi`): two ranks against one process with the same
//! global batch, against the same two shards computed in this process, a
//! resumed run, a rank with other data, and ranks that die or hang.
//!
//! The ranks run as root on CI, with more ranks than cores:
//! `mpirun --oversubscribe --allow-run-as-root`. Without mpirun on the PATH
//! every test fails, with a message: the feature is on, so MPI must be
//! there.
#![cfg(feature = "mpi")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wgtrain::backend::{Backend, Regularization, Replica, TrainSpec};
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{epoch_permutation, CsvOptions, DataSource, Dataset, Normalize, Preprocess};
use wgtrain::optim::{Adam, Decay, LrSchedule, Optimizer, ScheduleSpec, StepHyper, Warmup};
use wgtrain::Mlp;

const BIN: &str = env!("CARGO_BIN_EXE_wgtrain");

/// f32's unit roundoff.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// The longest a test's mpirun may run before the test fails.
const LIMIT: Duration = Duration::from_secs(120);

/// `mpirun -np <ranks>` with the flags CI needs, checked to exist.
fn mpirun(ranks: usize) -> Command {
    let found = Command::new("mpirun").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "mpirun not found: the `mpi` feature's tests need OpenMPI (apt install openmpi-bin libopenmpi-dev)"
    );
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root", "-np", &ranks.to_string()]);
    c
}

/// Wait for `child` at most `limit`; kill it and fail past that.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("waiting for mpirun").is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaping mpirun");
            panic!(
                "{what}: still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    let mut out = Output {
        status: child.wait().expect("reaping mpirun"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out.stdout).expect("reading stdout");
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_end(&mut out.stderr).expect("reading stderr");
    }
    (out, took)
}

fn spawn(mut c: Command) -> Child {
    // Files, not pipes, would not fill; the runs here print little.
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mpirun")
}

fn run_ok(c: Command, what: &str) -> Output {
    let (out, _) = wait_bounded(spawn(c), LIMIT, what);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The training flags both sides of a comparison share.
fn train_flags(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        "builtin",
        "--hidden",
        "32",
        "--epochs",
        "2",
        "--batch",
        "64",
        "--seed",
        "3",
        "--log-every",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn distributed(ranks: usize, flags: &[String]) -> Command {
    let mut c = mpirun(ranks);
    c.arg(BIN).args(flags).arg("--distributed");
    c
}

fn single(flags: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(flags);
    c
}

/// The epochs' training losses from `--json` lines.
fn epoch_losses(out: &Output) -> Vec<f64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "epoch")
        .map(|v| v["train_loss"].as_f64().expect("train_loss"))
        .collect()
}

fn packed(m: &Mlp) -> Vec<f32> {
    m.layers
        .iter()
        .flat_map(|l| l.weight.iter().chain(&l.bias))
        .copied()
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}

/// What the CLI builds from `train_flags` (the built-in digits, their
/// default test split, a 64-32-10 model scaled to [0, 1]).
fn cli_setup(seed: u64) -> (Arc<Dataset>, Mlp) {
    let (src, _) = DataSource::resolve(Some("builtin")).unwrap();
    let data = src
        .load(CsvOptions {
            label_col: -1,
            test_split: 0.2,
            seed,
        })
        .unwrap();
    let sizes = [data.dim(), 32, data.classes];
    let m = Mlp::new(
        &sizes,
        seed,
        Preprocess::fit(Normalize::Scale, &data),
        data.shape.clone(),
    )
    .unwrap();
    (Arc::new(data), m)
}

/// What two ranks compute, in this process: each global batch split into
/// halves, each half's gradient from its own replica, the two summed in f32
/// (as MPI's sum of two buffers does, one addition per entry) and applied
/// on both. Returns the model, and for [`bound_sgd`] per step the learning
/// rate, the largest `sum_r |t_r|` of a gradient entry over single-row
/// shards, and the largest gradient entry.
fn two_shards(spec: TrainSpec, schedule: &ScheduleSpec, epochs: usize, seed: u64) -> (Mlp, Vec<(f64, f64, f64)>) {
    let (data, m) = cli_setup(seed);
    let n = data.train.len();
    let steps = n.div_ceil(spec.batch);
    let lrs = LrSchedule::new(schedule, steps, epochs).unwrap();
    let mut reps: Vec<CpuBackend> = (0..2)
        .map(|_| CpuBackend::with_threads(m.clone(), data.clone(), spec, 1).unwrap())
        .collect();
    let mut probe = CpuBackend::with_threads(m.clone(), data.clone(), spec, 1).unwrap();
    let g = reps[0].gradient_len();
    let (mut a, mut b, mut row) = (vec![0.0f32; g], vec![0.0f32; g], vec![0.0f32; g]);
    let mut per_step = Vec::new();
    let mut global = 0;
    for epoch in 1..=epochs {
        let order = epoch_permutation(n, seed, epoch);
        for r in reps.iter_mut().chain(std::iter::once(&mut probe)) {
            r.begin_epoch(&order).unwrap();
        }
        for index in 0..steps {
            let rows = spec.batch.min(n - index * spec.batch);
            let half = rows / 2;
            reps[0].shard_gradients(index, 0..half, &mut a).unwrap();
            reps[1].shard_gradients(index, half..rows, &mut b).unwrap();
            for (x, y) in a.iter_mut().zip(&b) {
                *x += *y;
            }
            // sum_r |t_r| per entry, from single-row shards of the same
            // weights (plain SGD only: its rows draw nothing).
            let mut s = vec![0.0f64; g];
            if spec.optimizer == Optimizer::sgd() && spec.regular.is_off() {
                probe.restore(&reps[0].state().unwrap()).unwrap();
                for r in 0..rows {
                    probe.shard_gradients(index, r..r + 1, &mut row).unwrap();
                    for (s, t) in s.iter_mut().zip(&row) {
                        *s += t.abs() as f64;
                    }
                }
            }
            let lr = lrs.lr_at(global);
            let hyper = StepHyper { lr: lr as f32 };
            let big = a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
            per_step.push((lr, s.iter().copied().fold(0.0, f64::max), big));
            for r in reps.iter_mut() {
                r.apply_gradients(&a, &hyper).unwrap();
            }
            global += 1;
        }
    }
    (reps[0].model().unwrap(), per_step)
}

/// Tolerance of plain SGD's weights, two shards against one device, to
/// first order. A gradient entry is `sum_r t_r` over the batch's rows,
/// which one device sums in one order and two shards in another (each
/// half, then the two halves): two orders of a sum of `B` terms differ by
/// at most `2 (B - 1) u sum_r |t_r|` (Higham, 4.3); a row's own terms come
/// from products whose blocking depends on the rows, a few roundings per
/// fan-in `F` of each of the `L` layers more. So a step's gradients differ
/// by at most `2 (B + F L) u S` per entry and its update by `lr` times that
/// plus a rounding of the update (`u` of the weight, at most 1 here); over
/// the run the bounds add up. The effect of an earlier difference on later
/// gradients is of second order at these rates and sizes (and the rounding
/// bound is worst-case: actual differences are far below it).
fn bound_sgd(per_step: &[(f64, f64, f64)], batch: usize, fan_in: usize, layers: usize) -> f64 {
    per_step
        .iter()
        .map(|&(lr, s, _)| lr * 2.0 * (batch + fan_in * layers) as f64 * U * s + 2.0 * U)
        .sum()
}

#[test]
fn two_ranks_train_like_one_process_and_like_two_shards_here() {
    let dir = tempfile::tempdir().unwrap();
    let (p2, p1) = (dir.path().join("two.safetensors"), dir.path().join("one.safetensors"));
    let out2 = run_ok(
        distributed(2, &train_flags(&["--save", p2.to_str().unwrap()])),
        "2-rank run",
    );
    let out1 = run_ok(single(&train_flags(&["--save", p1.to_str().unwrap()])), "1-process run");
    let (m2, m1) = (Mlp::load(&p2).unwrap(), Mlp::load(&p1).unwrap());
    // Rank 0 alone prints: one JSON line per epoch, not one per rank.
    let (l2, l1) = (epoch_losses(&out2), epoch_losses(&out1));
    assert_eq!(l2.len(), 2, "{}", String::from_utf8_lossy(&out2.stdout));
    assert_eq!(l1.len(), 2);

    // The same arithmetic in this process gives the same bits.
    let spec = TrainSpec {
        seed: 3,
        ..TrainSpec::sgd(64)
    };
    let constant = ScheduleSpec {
        lr: f64::from(0.1f32),
        decay: Decay::Constant,
        warmup: Warmup::None,
    };
    let (here, per_step) = two_shards(spec, &constant, 2, 3);
    assert_eq!(packed(&m2), packed(&here), "2 ranks against 2 shards in one process");

    // One process with the same global batch, within the rounding bound.
    let tol = bound_sgd(&per_step, 64, 64, 2);
    let d = max_diff(&packed(&m2), &packed(&m1));
    assert!(d <= tol, "weights differ by {d:e}, bound {tol:e}");
    // A loss moves by at most the L1 norm of its gradient times the
    // weights' difference: parameters x largest gradient entry x bound.
    let g = per_step.iter().map(|s| s.2).fold(0.0, f64::max);
    let ltol = packed(&m1).len() as f64 * g * tol;
    for (e, (a, b)) in l2.iter().zip(&l1).enumerate() {
        assert!(
            (a - b).abs() <= ltol,
            "epoch {} loss {a} against {b} (bound {ltol:e})",
            e + 1
        );
    }

    // Three ranks: unequal shards (21, 21, 22 rows; the last batch 10
    // each) and a sum of three, in an order MPI picks; the same bound (any
    // order of the sums), on the nearby trajectory of the two shards.
    let p3 = dir.path().join("three.safetensors");
    run_ok(
        distributed(3, &train_flags(&["--save", p3.to_str().unwrap()])),
        "3-rank run",
    );
    let d3 = max_diff(&packed(&Mlp::load(&p3).unwrap()), &packed(&m1));
    assert!(d3 <= tol, "3 ranks: weights differ by {d3:e}, bound {tol:e}");
}

#[test]
fn one_rank_without_mpirun_trains_as_one_process() {
    // MPI's singleton start: a job of one rank, the whole batch its shard.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut flags = train_flags(&["--save", p.to_str().unwrap()]);
    flags.push("--distributed".into());
    let o = run_ok(single(&flags), "1-rank run");
    assert_eq!(epoch_losses(&o).len(), 2);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("rank 0 of 1"), "{log}");
    assert!(Mlp::load(&p).is_ok());
}

#[test]
fn two_ranks_with_adamw_dropout_clipping_and_a_schedule_match_two_shards_here() {
    let dir = tempfile::tempdir().unwrap();
    let p2 = dir.path().join("two.safetensors");
    let flags = train_flags(&[
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--weight-decay",
        "0.01",
        "--dropout",
        "0.2",
        "--clip-grad-norm",
        "0.5",
        "--schedule",
        "cosine",
        "--save",
        p2.to_str().unwrap(),
    ]);
    run_ok(distributed(2, &flags), "2-rank AdamW run");
    let spec = TrainSpec {
        batch: 64,
        optimizer: Optimizer::AdamW(Adam {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }),
        regular: Regularization {
            dropout: 0.2,
            clip_grad_norm: Some(0.5),
            ..Regularization::default()
        },
        seed: 3,
        ..TrainSpec::sgd(64)
    };
    let cosine = ScheduleSpec {
        lr: f64::from(0.01f32),
        decay: Decay::Cosine { lr_min: 0.0 },
        warmup: Warmup::None,
    };
    let (here, _) = two_shards(spec, &cosine, 2, 3);
    assert_eq!(packed(&Mlp::load(&p2).unwrap()), packed(&here));
}

#[test]
fn a_resumed_distributed_run_ends_as_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let (full, resumed) = (
        dir.path().join("full.safetensors"),
        dir.path().join("resumed.safetensors"),
    );
    let flags = train_flags(&[
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--save",
        full.to_str().unwrap(),
    ]);
    run_ok(distributed(2, &flags), "2-rank run with checkpoints");
    let first = ck.join("ckpt-e0001-s000023.safetensors");
    assert!(first.is_file(), "no checkpoint after epoch 1 in {}", ck.display());
    let mut c = mpirun(2);
    c.args([
        BIN,
        "train",
        "--distributed",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--log-every",
        "0",
    ])
    .arg("--resume")
    .arg(&first)
    .arg("--save")
    .arg(&resumed);
    let out = run_ok(c, "resumed 2-rank run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("resuming from").count(), 1, "rank 0 alone logs:\n{log}");
    assert_eq!(
        packed(&Mlp::load(&resumed).unwrap()),
        packed(&Mlp::load(&full).unwrap())
    );
}

/// A shell script that runs `body` with `$RANK` set to the MPI rank.
fn script(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("rank.sh");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nRANK=${{OMPI_COMM_WORLD_RANK:-$PMI_RANK}}\n{body}\n"),
    )
    .unwrap();
    let mut c = Command::new("chmod");
    assert!(c.arg("+x").arg(&p).status().unwrap().success());
    p
}

fn csv(path: &Path, seed: u64) {
    let v = wgtrain_random(40 * 5, seed);
    let rows: Vec<String> = v
        .chunks(5)
        .enumerate()
        .map(|(i, r)| format!("{},{},{},{},{}", r[0], r[1], r[2], r[3], i % 3))
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

/// Values in [0, 1) from a seed (a small LCG; any values do).
fn wgtrain_random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

#[test]
fn a_rank_given_other_data_is_refused_naming_the_rank_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    csv(&a, 1);
    csv(&b, 2);
    let s = script(
        dir.path(),
        &format!(
            "if [ \"$RANK\" = 1 ]; then D={}; else D={}; fi\nexec {BIN} train --distributed --device cpu --threads 1 --data \"$D\" --epochs 1 --hidden 8",
            b.display(),
            a.display()
        ),
    );
    let mut c = mpirun(2);
    c.arg(&s);
    let (out, _) = wait_bounded(spawn(c), LIMIT, "the refused run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rank 1 differs from rank 0"), "{err}");
    assert!(
        err.contains(&format!("data: rank 0 has {}", a.display()))
            && err.contains(&format!("rank 1 has {}", b.display())),
        "{err}"
    );
    assert!(!err.contains("epoch 1 done"), "a refused run trained:\n{err}");
}

/// Start a long 2-rank run whose ranks write their pids, wait until both
/// have trained a while, and return it with rank 1's pid.
fn long_run(dir: &Path, timeout_s: u64) -> (Child, String) {
    let s = script(
        dir,
        &format!(
            "echo $$ > {}/pid.$RANK\nexec {BIN} train --distributed --device cpu --threads 1 --data builtin --hidden 16 --epochs 100000 --log-every 0 --mpi-timeout {timeout_s}",
            dir.display()
        ),
    );
    let mut c = mpirun(2);
    c.arg(&s);
    // The run's output goes to files, so that no pipe fills while it runs.
    let log = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = c.stdout(Stdio::null()).stderr(log).spawn().expect("starting mpirun");
    let pid = dir.join("pid.1");
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        if pid.is_file() && text.contains("epoch 3 done") {
            break;
        }
        assert!(t0.elapsed() < LIMIT, "the run did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, std::fs::read_to_string(pid).unwrap().trim().to_string())
}

#[test]
fn a_killed_rank_makes_the_other_exit_non_zero_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pid) = long_run(dir.path(), 20);
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let (out, took) = wait_bounded(child, Duration::from_secs(30), "the job after kill -9 of rank 1");
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_hung_rank_trips_the_watchdog_of_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (child, pid) = long_run(dir.path(), 3);
    // Stopped, rank 1 neither answers nor exits: only the watchdog of
    // rank 0 (3 s) ends the job.
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let (out, took) = wait_bounded(child, Duration::from_secs(40), "the job with rank 1 stopped");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("rank 0 of 2: ") && l.contains("has waited")),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// `wgtrain tune` under mpirun: every rank is one process of the study on
/// the shared database, so the ranks together run each trial exactly once
/// (no MPI calls are needed for it; the database hands out the trials).
#[test]
fn tune_ranks_share_one_study() {
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space.toml");
    std::fs::write(
        &space,
        "epochs = 3\nlr = { min = 0.02, max = 0.3, log = true }\nwidth = 16\nbatch = 64\n",
    )
    .unwrap();
    let out = dir.path().join("study");
    let mut c = mpirun(2);
    c.arg(BIN).args([
        "tune",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--trials",
        "6",
    ]);
    c.args(["--no-prune", "--quiet", "--space"])
        .arg(&space)
        .arg("--out")
        .arg(&out);
    let o = run_ok(c, "mpirun -np 2 wgtrain tune");
    let text = String::from_utf8_lossy(&o.stdout);
    // Each rank ends with "ran N trial(s) in ...".
    let ran: Vec<usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ran ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(ran.len(), 2, "one summary per rank:\n{text}");
    assert_eq!(ran.iter().sum::<usize>(), 6, "the ranks ran {ran:?} trials:\n{text}");
    let trials = wgtrain::tune::Storage::open(&out.join("study.db"))
        .unwrap()
        .trials()
        .unwrap();
    assert_eq!(trials.len(), 6);
    assert!(
        trials.iter().all(|t| t.attempts == 1 && t.state.is_finished()),
        "{trials:?}"
    );
}
