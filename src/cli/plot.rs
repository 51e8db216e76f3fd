//! `wgtrain plot`: loss and accuracy curves from a metrics file.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

use wgtrain::metrics::{read_metrics, MetricsRow};

#[derive(Debug, Args)]
pub(crate) struct PlotArgs {
    /// A metrics file written by `wgtrain train --metrics-file` (.jsonl or
    /// .csv).
    #[arg(value_name = "METRICS")]
    metrics: PathBuf,
    /// The picture to write: PNG (.png) or SVG (.svg), by extension.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// A TrueType font for the labels [default: DejaVu Sans or Liberation
    /// Sans from the system's font folders].
    #[arg(long, value_name = "FILE.ttf")]
    font: Option<PathBuf>,
    /// Width of the picture in pixels.
    #[arg(long, default_value_t = 1000, value_name = "PX")]
    width: u32,
    /// Height of the picture in pixels.
    #[arg(long, default_value_t = 400, value_name = "PX")]
    height: u32,
}

/// Fonts tried, in order, when --font is not given.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// Run `wgtrain plot`.
pub(crate) fn run(a: PlotArgs) -> Result<()> {
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let svg = match ext.as_deref() {
        Some("svg") => true,
        Some("png") => false,
        _ => bail!("-o {}: give a name ending in .png or .svg", a.output.display()),
    };
    if a.width < 200 || a.height < 150 {
        bail!("--width {} --height {}: at least 200 x 150 pixels", a.width, a.height);
    }
    let rows = read_metrics(&a.metrics).with_context(|| format!("cannot read {}", a.metrics.display()))?;
    let epochs: Vec<&MetricsRow> = rows.iter().filter(|r| r.kind == "epoch").collect();
    if epochs.is_empty() {
        bail!("{}: no epoch lines to plot", a.metrics.display());
    }
    register_font(a.font.as_deref())?;
    let size = (a.width, a.height);
    if svg {
        let root = SVGBackend::new(&a.output, size).into_drawing_area();
        draw(&root, &epochs)?;
        root.present()
            .map_err(|e| anyhow!("cannot write {}: {e}", a.output.display()))?;
    } else {
        let mut buf = vec![0u8; 3 * a.width as usize * a.height as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            draw(&root, &epochs)?;
            root.present().map_err(|e| anyhow!("drawing failed: {e}"))?;
        }
        let img = image::RgbImage::from_raw(a.width, a.height, buf).context("picture buffer of the wrong size")?;
        img.save_with_format(&a.output, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", a.output.display()))?;
    }
    log::info!(
        "wrote {} ({} epochs from {})",
        a.output.display(),
        epochs.len(),
        a.metrics.display()
    );
    Ok(())
}

/// Register the labels' font as plotters' `sans-serif`.
pub(crate) fn register_font(given: Option<&Path>) -> Result<()> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => FONTS.iter().map(PathBuf::from).find(|p| p.is_file()).with_context(|| {
            format!(
                "no TrueType font found for the labels (looked for {}); give --font FILE.ttf",
                FONTS.join(", ")
            )
        })?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("--font {}: cannot read it", path.display()))?;
    // plotters keeps registered fonts for the life of the program.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("--font {}: not a TrueType font", path.display()))
}

/// One curve: a name, a colour and `(epoch, value)` points.
type Curve = (&'static str, RGBColor, Vec<(f64, f64)>);

fn curves(epochs: &[&MetricsRow], pick: impl Fn(&MetricsRow) -> [Option<f64>; 3]) -> Vec<Curve> {
    let names = [
        ("training", BLUE),
        ("validation", RGBColor(230, 120, 0)),
        ("test", RGBColor(0, 150, 60)),
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, &(name, colour))| {
            let pts = epochs
                .iter()
                .filter_map(|r| pick(r)[i].filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v)))
                .collect();
            (name, colour, pts)
        })
        .filter(|(_, _, pts): &Curve| !pts.is_empty())
        .collect()
}

/// Two panels: loss, then accuracy (in percent), against the epoch.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, epochs: &[&MetricsRow]) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing failed: {e}");
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let loss = curves(epochs, |r| [Some(r.train_loss), r.validation_loss, r.test_loss]);
    let pct = |v: Option<f64>| v.map(|x| 100.0 * x);
    let acc = curves(epochs, |r| {
        [
            Some(100.0 * r.train_accuracy),
            pct(r.validation_accuracy),
            pct(r.test_accuracy),
        ]
    });
    let last = epochs.iter().map(|r| r.epoch).max().unwrap_or(1).max(2) as f64;
    for (area, (title, series)) in panels.iter().zip([("loss", loss), ("accuracy (%)", acc)]) {
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|&(_, v)| v))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(1.0..last, (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        for (name, colour, pts) in series {
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
