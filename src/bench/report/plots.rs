//! The report's figures as data (series of points on log-log axes) and
//! their drawing with plotters on any backend: SVG for HTML, a bitmap for
//! the PNGs beside a markdown report. Text is drawn in plotters'
//! `sans-serif`, which the caller registers (ab_glyph needs a font).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::record::Run;
use super::roofline::{intensity, Peaks};
use super::tables::{fmt, model_name};
use crate::error::ReportError;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Measurements joined in x order (one configuration changing).
    Line,
    /// Measurements as markers only (unrelated shapes of one device).
    Points,
    /// A roof: a dashed line without markers.
    Roof,
}

/// One series: a legend label and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// `(x, y)` points, both positive (log axes).
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub style: Style,
}

/// One figure on log-log axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File-name part: `epoch-batch`, `epoch-size`, `matmul-roofline`,
    /// `inference-latency`.
    pub name: &'static str,
    /// The title above the plot.
    pub title: String,
    /// The x axis's label.
    pub x_label: &'static str,
    /// The y axis's label.
    pub y_label: &'static str,
    /// The series drawn.
    pub series: Vec<Series>,
}

/// Points grouped by label, in the order the labels first appear, each
/// series sorted by x.
fn group(style: Style, items: impl Iterator<Item = (String, (f64, f64))>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for (label, p) in items {
        if !(p.0 > 0.0 && p.1 > 0.0 && p.0.is_finite() && p.1.is_finite()) {
            continue;
        }
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(p),
            None => out.push(Series {
                label,
                points: vec![p],
                style,
            }),
        }
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn prefix(runs: &[Run], run: &Run) -> String {
    if runs.len() > 1 {
        format!("{}: ", run.label)
    } else {
        String::new()
    }
}

/// Every figure that has points, in the report's order.
pub fn figures(runs: &[Run], peaks: &Peaks) -> Vec<Figure> {
    let mut out = Vec::new();
    out.push(Figure {
        name: "epoch-batch",
        title: "Steady epoch time against batch size".into(),
        x_label: "batch size",
        y_label: "epoch (s)",
        series: group(
            Style::Line,
            runs.iter().flat_map(|run| {
                run.epochs().map(move |e| {
                    let opt = e.optimizer.as_deref().unwrap_or("sgd");
                    (
                        format!("{}{} {} {opt}", prefix(runs, run), e.device, model_name(&e.sizes)),
                        (e.batch as f64, e.steady_epoch_s),
                    )
                })
            }),
        ),
    });
    out.push(Figure {
        name: "epoch-size",
        title: "Steady epoch time against model size".into(),
        x_label: "parameters",
        y_label: "epoch (s)",
        series: group(
            Style::Line,
            runs.iter().flat_map(|run| {
                run.epochs().filter_map(move |e| {
                    let opt = e.optimizer.as_deref().unwrap_or("sgd");
                    e.parameters.map(|p| {
                        (
                            format!("{}{} batch {} {opt}", prefix(runs, run), e.device, e.batch),
                            (p as f64, e.steady_epoch_s),
                        )
                    })
                })
            }),
        ),
    });
    let mut matmul = group(
        Style::Points,
        runs.iter().flat_map(|run| {
            run.matmuls().map(move |m| {
                (
                    format!("{}{}", prefix(runs, run), m.device),
                    (intensity(m.m, m.n, m.k), m.gflops),
                )
            })
        }),
    );
    let (lo, hi) = matmul
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let mut devices: Vec<&str> = Vec::new();
    for run in runs {
        for m in run.matmuls() {
            if !devices.contains(&m.device.as_str()) {
                devices.push(&m.device);
            }
        }
    }
    for d in devices {
        if let Some(p) = peaks.lookup(d) {
            if lo.is_finite() {
                let (a, b) = (lo / 2.0, (hi * 2.0).max(p.ridge() * 2.0));
                let mut pts = vec![(a, p.attainable(a))];
                if p.ridge() > a && p.ridge() < b {
                    pts.push((p.ridge(), p.gflops));
                }
                pts.push((b, p.attainable(b)));
                matmul.push(Series {
                    label: format!("roof of {} ({} GFLOP/s, {} GB/s)", p.name, p.gflops, p.gbps),
                    points: pts,
                    style: Style::Roof,
                });
            }
        }
    }
    out.push(Figure {
        name: "matmul-roofline",
        title: "Matrix-product throughput against arithmetic intensity".into(),
        x_label: "FLOP per byte",
        y_label: "GFLOP/s",
        series: matmul,
    });
    out.push(Figure {
        name: "inference-latency",
        title: "Batch-1 latency percentiles per predictor".into(),
        x_label: "1 call in N is slower (N = 100 / (100 - percentile): 2 is p50, 10 p90, 100 p99)",
        y_label: "latency (us)",
        series: group(
            Style::Line,
            runs.iter().flat_map(|run| {
                run.inferences().flat_map(move |p| {
                    let label = format!("{}{}", prefix(runs, run), p.predictor);
                    let mut v = vec![(label.clone(), (2.0, p.batch1_p50_us))];
                    if let Some(p90) = p.batch1_p90_us {
                        v.push((label.clone(), (10.0, p90)));
                    }
                    v.push((label, (100.0, p.batch1_p99_us)));
                    v
                })
            }),
        ),
    });
    out.retain(|f| f.series.iter().any(|s| s.style != Style::Roof));
    out
}

/// The range of `values` out to the powers of ten around them (plotters
/// marks a log axis from its powers of ten).
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return 1.0..10.0;
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    lo..hi
}

/// An axis label: three significant digits, no trailing zeros.
fn tick(v: &f64) -> String {
    let s = fmt(*v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Draw `fig` on `root`.
pub fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<(), ReportError> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| ReportError::Draw {
        figure: fig.name.to_string(),
        message: e.to_string(),
    };
    root.fill(&WHITE).map_err(err)?;
    let xs = log_range(fig.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    // Roofs included, so that every line lies inside the axes.
    let ys = log_range(fig.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let legend_low = fig.name == "matmul-roofline";
    // A decade more on top for a legend of many lines above the data.
    let ys = if !legend_low && fig.series.len() > 3 {
        ys.start..ys.end * 10.0
    } else {
        ys
    };
    let mut chart = ChartBuilder::on(root)
        .caption(&fig.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(65)
        .build_cartesian_2d(xs.log_scale(), ys.log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(fig.x_label)
        .y_desc(fig.y_label)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, s) in fig.series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        if s.style == Style::Roof {
            let style = colour.stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        } else {
            let style = colour.stroke_width(2);
            let dots = chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
            if s.style == Style::Line {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style))
                    .map_err(err)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            } else {
                let fill = colour.filled();
                dots.label(s.label.clone())
                    .legend(move |(x, y)| Circle::new((x + 9, y), 3, fill));
            }
        }
    }
    chart
        .configure_series_labels()
        // The roofline's empty corner is below the roofs, on the right.
        .position(if legend_low {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Width and height of every figure, pixels.
pub const SIZE: (u32, u32) = (900, 480);

/// `fig` as an SVG document.
pub fn svg(fig: &Figure) -> Result<String, ReportError> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        draw(&root, fig)?;
        root.present().map_err(|e| ReportError::Draw {
            figure: fig.name.to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(s)
}

/// `fig` as PNG bytes.
pub fn png(fig: &Figure) -> Result<Vec<u8>, ReportError> {
    let (w, h) = SIZE;
    let mut buf = vec![0u8; 3 * w as usize * h as usize];
    let fail = |message: String| ReportError::Draw {
        figure: fig.name.to_string(),
        message,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        draw(&root, fig)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(out)
}
