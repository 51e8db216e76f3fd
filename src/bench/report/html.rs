//! The report as one self-contained HTML file: tables as HTML tables, the
//! figures as inline SVG.

use super::plots::svg;
use super::tables::Table;
use super::Report;
use crate::error::ReportError;

/// `s` with `&`, `<`, `>` and `"` escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn table(t: &Table) -> String {
    let mut s = format!(
        "<h2>{}</h2>\n<p>{}</p>\n<table>\n<thead><tr>",
        escape(&t.title),
        escape(&t.note)
    );
    for h in &t.headers {
        s.push_str(&format!("<th>{}</th>", escape(h)));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        s.push_str("<tr>");
        for c in row {
            s.push_str(&format!("<td>{}</td>", escape(c)));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1200px}\
table{border-collapse:collapse;margin-bottom:1em}\
th,td{border:1px solid #bbb;padding:2px 8px;text-align:left}\
td{font-variant-numeric:tabular-nums}\
th{background:#eee}figure{margin:1em 0}";

/// The whole document.
pub fn render(report: &Report) -> Result<String, ReportError> {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>wgtrain benchmark report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>wgtrain benchmark report</h1>\n"
    );
    for t in report.tables() {
        s.push_str(&table(&t));
    }
    for f in report.figures() {
        s.push_str(&format!(
            "<figure id=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
            f.name,
            svg(&f)?,
            escape(&f.title)
        ));
    }
    s.push_str("</body>\n</html>\n");
    Ok(s)
}
