//! Benchmark reports (`wgtrain bench --report`, `--compare`): the JSON
//! lines of one or several runs of `wgtrain bench` read back
//! ([`record`]), summarised in tables ([`tables`]), matched and divided
//! ([`mod@compare`]), set against the device's roofline where its peaks are
//! known ([`roofline`]), drawn ([`plots`]) and written as one HTML file
//! with inline SVG ([`html`]) or as markdown with PNG figures beside it
//! ([`markdown`]).
//!
//! The figures draw their text in plotters' `sans-serif` family: the
//! caller registers a TrueType font for it first (the binary's
//! `--font`).

pub mod compare;
pub mod html;
pub mod markdown;
pub mod plots;
pub mod record;
pub mod roofline;
pub mod tables;

use std::path::Path;

pub use compare::{compare, Comparison, Ratio};
pub use plots::Figure;
pub use record::{split_label, Record, Run};
pub use roofline::{intensity, Peak, Peaks, KNOWN_PEAKS};
pub use tables::Table;

/// What a report holds: the runs in the order given, the peaks of the
/// roofline, and optionally the ratios of the second run to the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The runs, in the order given.
    pub runs: Vec<Run>,
    /// The device peaks the roofline knows.
    pub peaks: Peaks,
    /// The ratios of the second run to the first, when asked.
    pub comparison: Option<Comparison>,
}

impl Report {
    /// A report of `runs`; with `compare`, the ratios of the second run's
    /// lines to the first's too (there must then be two runs at least).
    pub fn new(runs: Vec<Run>, peaks: Peaks, compare: bool) -> Report {
        let comparison = match (compare, runs.as_slice()) {
            (true, [a, b, ..]) => Some(compare::compare(a, b)),
            _ => None,
        };
        Report {
            runs,
            peaks,
            comparison,
        }
    }

    /// The runs as a table: label, file name, lines by kind, lines skipped.
    pub fn runs_table(&self) -> Table {
        Table {
            title: "Runs".into(),
            note: "The input files; lines of kinds the report does not know are skipped and counted.".into(),
            headers: ["run", "file", "lines", "skipped"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rows: self
                .runs
                .iter()
                .map(|r| {
                    let mut kinds: Vec<(&str, usize)> = Vec::new();
                    for rec in &r.records {
                        match kinds.iter_mut().find(|(k, _)| *k == rec.kind()) {
                            Some((_, n)) => *n += 1,
                            None => kinds.push((rec.kind(), 1)),
                        }
                    }
                    let lines: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
                    let skipped: Vec<String> = r.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
                    vec![
                        r.label.clone(),
                        r.path
                            .file_name()
                            .map_or_else(|| r.path.display().to_string(), |f| f.to_string_lossy().into_owned()),
                        lines.join(", "),
                        if skipped.is_empty() {
                            "-".into()
                        } else {
                            skipped.join(", ")
                        },
                    ]
                })
                .collect(),
        }
    }

    /// Every table: the runs, each kind of line, then the comparison.
    pub fn tables(&self) -> Vec<Table> {
        let mut t = vec![self.runs_table()];
        t.extend(tables::tables(&self.runs, &self.peaks));
        if let Some(c) = &self.comparison {
            t.push(c.table());
        }
        t
    }

    /// Every figure with points.
    pub fn figures(&self) -> Vec<Figure> {
        plots::figures(&self.runs, &self.peaks)
    }
}

/// The kinds of report file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One self-contained `.html` file, figures as inline SVG.
    Html,
    /// A `.md` file and its PNG figures beside it.
    Markdown,
}

impl Format {
    /// The format of a report named `path`: `.html`/`.htm` or `.md`.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "html" | "htm" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Markdown),
            _ => None,
        }
    }
}

/// Write `report` to `path` in the format of its extension (HTML when it
/// is not `.md`), with its PNGs beside a markdown file; the files written.
pub fn write(report: &Report, path: &Path) -> Result<Vec<std::path::PathBuf>, crate::error::ReportError> {
    match Format::of(path) {
        Some(Format::Markdown) => markdown::write(report, path),
        _ => {
            let text = html::render(report)?;
            write_file(path, text.as_bytes())?;
            Ok(vec![path.to_path_buf()])
        }
    }
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), crate::error::ReportError> {
    std::fs::write(path, bytes).map_err(|source| crate::error::ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}
