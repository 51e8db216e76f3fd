//! `wgtrain tune`: a hyperparameter search, and `--report` on a study.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::args::{load_data, DataArgs, DeviceArgs};
use super::flagged;
use wgtrain::data::builtin::SOURCE as BUILTIN_SOURCE;
use wgtrain::device::BackendMaker;
use wgtrain::tune::{
    best_trial, epochs_spent, run_study, Asha, Sampler, Space, Storage, StudyOptions, TrialEvent, TrialRow, TrialState,
};

#[derive(Debug, Args)]
pub(crate) struct TuneArgs {
    /// The search space, a TOML file: each key (lr, optimizer, weight_decay,
    /// momentum, dropout, width, depth, batch, schedule, shift,
    /// label_smoothing) a value (fixed), a
    /// list (one of these) or a range `{ min = A, max = B, log = true }`,
    /// and `epochs`, the most epochs of a trial (see the README). Default:
    /// lr 3e-4..0.3 (log), sgd/momentum/adam/adamw, weight decay
    /// 1e-6..1e-3 (log), dropout 0..0.3, width 128/256/512, depth 1/2,
    /// batch 32/64/128, constant/cosine schedule, 10 epochs (30 on the
    /// built-in digits), no shift or label smoothing.
    #[arg(long, value_name = "FILE.toml")]
    space: Option<PathBuf>,
    /// Trials the study holds in all, counting those of earlier runs and of
    /// other processes on the same database; a grid study stops at the
    /// grid's size.
    #[arg(long, default_value_t = 24, value_name = "N")]
    trials: usize,
    /// The study folder: the trials' models (trials/), the best one
    /// (best.safetensors) and, by default, the database (study.db).
    #[arg(long, default_value = "study", value_name = "DIR")]
    out: PathBuf,
    /// The study database (SQLite) [default: study.db in --out]. Several
    /// `wgtrain tune` processes given the same file work on one study, each
    /// taking trials no other has taken; a study run again continues where
    /// it stopped.
    #[arg(long, value_name = "FILE")]
    storage: Option<PathBuf>,
    /// How configurations are drawn: random (seeded by --seed and the trial
    /// number, log-uniform on log ranges) or grid (every combination; a
    /// range gives `points` values, 3 by default).
    #[arg(long, value_enum, default_value_t = Sampler::Random)]
    sampler: Sampler,
    /// Overrides the space's `epochs`: the most epochs of a trial.
    #[arg(long, value_name = "N")]
    epochs: Option<usize>,
    /// Successive halving: epochs of the first rung (the grace period).
    /// Rungs lie at grace x eta^k epochs; at a rung a trial goes on only if
    /// its validation accuracy is in the top 1/eta of those recorded there
    /// so far (the first to arrive always goes on).
    #[arg(long, default_value_t = 1, value_name = "EPOCHS")]
    grace: usize,
    /// Successive halving: the reduction factor (at least 2).
    #[arg(long, default_value_t = 3, value_name = "ETA")]
    eta: usize,
    /// Train every trial for every epoch (no successive halving).
    #[arg(long)]
    no_prune: bool,
    /// Trials trained at once by this process: on the CPU each gets
    /// --threads / K threads; on a GPU they share the device, their work
    /// interleaved in one queue.
    #[arg(long, default_value_t = 1, value_name = "K")]
    parallel_trials: usize,
    /// The fraction of the training set held out (class-stratified, seeded
    /// by --seed) to compare trials on; the test set is used only once, on
    /// the best trial at the end.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    val_split: f64,
    /// Seeds the sampler, the validation split and every trial's weights
    /// and shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A running trial whose process has not reported for this many seconds
    /// is taken for dead: re-queued (or failed after its second try).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    stale_after: f64,
    /// Print the leaderboard of this study database and draw its curves
    /// (validation accuracy against the epoch); trains nothing.
    #[arg(long, value_name = "DB", conflicts_with_all = ["space", "sampler", "epochs", "no_prune", "parallel_trials"])]
    report: Option<PathBuf>,
    /// With --report: the curves picture, PNG (.png) or SVG (.svg)
    /// [default: curves.png beside the database].
    #[arg(long, value_name = "FILE", requires = "report")]
    plot: Option<PathBuf>,
    /// With --report: a TrueType font for the picture's labels [default:
    /// DejaVu Sans or Liberation Sans from the system's font folders].
    #[arg(long, value_name = "FILE.ttf", requires = "report")]
    font: Option<PathBuf>,
    /// Rows of the leaderboard.
    #[arg(long, default_value_t = 10, value_name = "N")]
    top: usize,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Names of the classes, stored in every trial's model and in
    /// best.safetensors, as `train --class-names` takes them: a file (one
    /// name a line, in class order) or a comma-separated list.
    #[arg(long, value_name = "FILE|a,b,...")]
    class_names: Option<String>,
}

/// Run `wgtrain tune`.
pub(crate) fn run(a: TuneArgs) -> Result<()> {
    if let Some(db) = &a.report {
        return report(db, a.plot.as_deref(), a.font.as_deref(), a.top);
    }
    if a.trials == 0 {
        bail!("--trials 0: expected at least 1");
    }
    if a.parallel_trials == 0 {
        bail!("--parallel-trials 0: expected at least 1");
    }
    if !(a.val_split > 0.0 && a.val_split < 1.0) {
        bail!(
            "--val-split {}: expected a fraction in (0, 1); trials are compared on it, never on the test set",
            a.val_split
        );
    }
    if !(a.stale_after.is_finite() && a.stale_after >= 1.0) {
        bail!("--stale-after {}: expected at least 1 second", a.stale_after);
    }
    if a.epochs == Some(0) {
        bail!("--epochs 0: expected at least 1");
    }
    // The space is read and checked before the data.
    let mut space = match &a.space {
        Some(p) => Some(Space::load(p)?),
        None => None,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}: cannot create it", a.out.display()))?;
    let storage = a.storage.clone().unwrap_or_else(|| a.out.join("study.db"));
    let mut data = load_data(&a.data, a.seed)?;
    data.hold_out_validation(a.val_split, a.seed).map_err(flagged)?;
    let class_names = match &a.class_names {
        Some(v) => super::class_names::parse(v, data.classes)?,
        None => Vec::new(),
    };
    let builtin = data.source == BUILTIN_SOURCE;
    let space = match space.take() {
        Some(mut s) => {
            if let Some(e) = a.epochs {
                s.epochs = e;
            }
            s
        }
        None => Space::default_search(a.epochs.unwrap_or(if builtin { 30 } else { 10 })),
    };
    let asha = if a.no_prune {
        None
    } else {
        Some(Asha::new(a.grace, a.eta, space.epochs).map_err(|e| anyhow!("--grace {} --eta {}: {e}", a.grace, a.eta))?)
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let total = if a.device.threads == 0 { cores } else { a.device.threads };
    let per_trial = (total / a.parallel_trials).max(1);
    let maker = BackendMaker::open(&a.device.device, per_trial).map_err(flagged)?;
    log::info!(
        "study {}: {} trials, {} sampler, {} epochs at most{}; {} at once on {}",
        storage.display(),
        a.trials,
        match a.sampler {
            Sampler::Random => "random",
            Sampler::Grid => "grid",
        },
        space.epochs,
        asha.map(|h| format!(", successive halving at epochs {:?} (eta {})", h.rungs(), h.eta))
            .unwrap_or_default(),
        a.parallel_trials,
        if maker.is_gpu() {
            "the GPU".to_string()
        } else {
            format!("the CPU ({per_trial} threads each)")
        }
    );
    let opts = StudyOptions {
        trials: a.trials,
        sampler: a.sampler,
        seed: a.seed,
        asha,
        parallel: a.parallel_trials,
        out: a.out.clone(),
        storage: storage.clone(),
        stale_after: Duration::from_secs_f64(a.stale_after),
        val_split: a.val_split,
        class_names,
    };
    let t0 = std::time::Instant::now();
    let make = |m, d, s| maker.make(m, d, s);
    let on_event = |e: &TrialEvent| match e {
        TrialEvent::Started { number, config } => log::info!("trial {number}: {}", config.summary()),
        TrialEvent::Epoch {
            number,
            point,
            promoted,
        } => log::debug!(
            "trial {number} epoch {}: validation {:.2}% loss {:.4}{}",
            point.epoch,
            100.0 * point.val_accuracy,
            point.val_loss,
            if *promoted { "" } else { " (pruned)" }
        ),
        TrialEvent::Finished {
            number,
            state,
            epochs,
            val_accuracy,
            message,
        } => log::info!(
            "trial {number}: {} after {epochs} epochs, best validation {}{}",
            state.as_str(),
            val_accuracy
                .map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or_else(|| "-".into()),
            message
                .as_ref()
                .filter(|_| *state == TrialState::Failed)
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
    };
    let result = run_study(&space, data, &opts, &make, &on_event).map_err(flagged)?;
    let secs = t0.elapsed().as_secs_f64();
    outln!(
        "ran {} trial(s) in {:.1} s ({:.1} trials per hour)",
        result.ran.len(),
        secs,
        result.ran.len() as f64 * 3600.0 / secs.max(1e-9)
    );
    print_leaderboard(&result.trials, space.epochs, a.top)?;
    match &result.best {
        Some(b) => outln!(
            "best: trial {}, validation {:.2}%, test {:.2}% (loss {:.4}, {} examples, evaluated once); model {}",
            b.number,
            100.0 * b.val_accuracy,
            100.0 * b.test_accuracy,
            b.test_loss,
            b.test_examples,
            b.model
        ),
        None if result.trials.iter().any(|t| !t.state.is_finished()) => outln!(
            "other processes are still running trials; `wgtrain tune --report {}` shows the study later",
            storage.display()
        ),
        None => outln!("no trial finished with a model"),
    }
    Ok(())
}

fn print_leaderboard(trials: &[TrialRow], max_epochs: usize, top: usize) -> Result<()> {
    let count = |s: TrialState| trials.iter().filter(|t| t.state == s).count();
    let (spent, full) = epochs_spent(trials, max_epochs);
    outln!(
        "{} trials: {} complete, {} pruned, {} failed, {} running or queued; epochs spent {} of {} ({:.1}%)",
        trials.len(),
        count(TrialState::Complete),
        count(TrialState::Pruned),
        count(TrialState::Failed),
        count(TrialState::Running) + count(TrialState::Queued),
        spent,
        full,
        100.0 * spent as f64 / (full.max(1)) as f64
    );
    let mut ranked: Vec<&TrialRow> = trials.iter().collect();
    // Complete trials first, then by validation accuracy.
    ranked.sort_by(|a, b| {
        let key = |t: &TrialRow| {
            (
                t.state == TrialState::Complete,
                t.val_accuracy.unwrap_or(f64::NEG_INFINITY),
            )
        };
        let (ka, kb) = (key(a), key(b));
        kb.0.cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then(a.number.cmp(&b.number))
    });
    outln!(
        "{:>4} {:>5} {:<8} {:>6} {:>8} {:>8}  configuration",
        "rank",
        "trial",
        "state",
        "epochs",
        "val acc",
        "val loss"
    );
    for (i, t) in ranked.iter().take(top).enumerate() {
        outln!(
            "{:>4} {:>5} {:<8} {:>6} {:>8} {:>8}  {}",
            i + 1,
            t.number,
            t.state.as_str(),
            t.epochs,
            t.val_accuracy
                .map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or_else(|| "-".into()),
            t.val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
            t.config.summary()
        );
    }
    Ok(())
}

/// `--report`: the leaderboard, the best trial's test figures, the curves.
fn report(db: &Path, plot: Option<&Path>, font: Option<&Path>, top: usize) -> Result<()> {
    let st = Storage::open_existing(db).map_err(flagged)?;
    let settings = st
        .settings()
        .map_err(flagged)?
        .with_context(|| format!("{}: holds no study", db.display()))?;
    let trials = st.trials().map_err(flagged)?;
    outln!(
        "study {}: {} sampler, seed {}, {} epochs at most, {}; data {}",
        db.display(),
        match settings.sampler {
            Sampler::Random => "random",
            Sampler::Grid => "grid",
        },
        settings.seed,
        settings.space.epochs,
        settings
            .asha
            .map(|h| format!("successive halving at epochs {:?} (eta {})", h.rungs(), h.eta))
            .unwrap_or_else(|| "no pruning".into()),
        settings.data
    );
    print_leaderboard(&trials, settings.space.epochs, top)?;
    match st.best().map_err(flagged)? {
        Some(b) => outln!(
            "best: trial {}, validation {:.2}%, test {:.2}% ({} examples); model {}",
            b.number,
            100.0 * b.val_accuracy,
            100.0 * b.test_accuracy,
            b.test_examples,
            b.model
        ),
        None => {
            if let Some(b) = best_trial(&trials) {
                outln!(
                    "best so far: trial {}, validation {:.2}% (not yet evaluated on the test set)",
                    b.number,
                    100.0 * b.val_accuracy.unwrap_or(0.0)
                );
            }
        }
    }
    let mut curves = Vec::new();
    for t in &trials {
        let c = st.curve(t.number).map_err(flagged)?;
        if !c.is_empty() {
            curves.push((
                t.number,
                t.state,
                c.iter().map(|p| (p.epoch as f64, 100.0 * p.val_accuracy)).collect(),
            ));
        }
    }
    if curves.is_empty() {
        return Ok(());
    }
    let out = plot.map(Path::to_path_buf).unwrap_or_else(|| {
        db.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("curves.png")
    });
    match draw_curves(&out, font, &curves, settings.space.epochs) {
        Ok(()) => {
            outln!("curves: {}", out.display());
            Ok(())
        }
        // The default picture is a courtesy; a named one must be written.
        Err(e) if plot.is_none() => {
            log::warn!("no curves drawn: {e:#}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A trial's validation accuracy (%) by epoch.
type TrialCurve = (usize, TrialState, Vec<(f64, f64)>);

fn draw_curves(out: &Path, font: Option<&Path>, curves: &[TrialCurve], epochs: usize) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let svg = match ext.as_deref() {
        Some("svg") => true,
        Some("png") => false,
        _ => bail!("--plot {}: give a name ending in .png or .svg", out.display()),
    };
    super::plot::register_font(font)?;
    let size = (1000u32, 500u32);
    if svg {
        let root = SVGBackend::new(out, size).into_drawing_area();
        draw(&root, curves, epochs)?;
        root.present()
            .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
    } else {
        let mut buf = vec![0u8; 3 * size.0 as usize * size.1 as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            draw(&root, curves, epochs)?;
            root.present().map_err(|e| anyhow!("drawing failed: {e}"))?;
        }
        let img = image::RgbImage::from_raw(size.0, size.1, buf).context("picture buffer of the wrong size")?;
        img.save_with_format(out, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// Validation accuracy against the epoch, one line per trial: complete
/// trials in colour, pruned and failed ones in grey.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &[TrialCurve], epochs: usize) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing failed: {e}");
    root.fill(&WHITE).map_err(err)?;
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(_, v)| v))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(0.5);
    let mut chart = ChartBuilder::on(root)
        .caption("validation accuracy (%) of each trial", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1.0..(epochs.max(2) as f64), (lo - pad)..(hi + pad).min(100.5))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    let mut k = 0;
    for (number, state, pts) in curves {
        if *state == TrialState::Complete {
            let colour = palette[k % palette.len()];
            k += 1;
            let series = chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(err)?;
            if k <= 10 {
                series
                    .label(format!("trial {number}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            }
        } else {
            let grey = RGBColor(150, 150, 150);
            chart
                .draw_series(LineSeries::new(pts.clone(), grey.stroke_width(1)))
                .map_err(err)?;
            // Where it stopped (a trial pruned at the first rung is one point).
            chart
                .draw_series(pts.last().map(|&p| Circle::new(p, 3, grey.filled())))
                .map_err(err)?;
        }
    }
    if k > 0 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
