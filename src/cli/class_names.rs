//! `--class-names`: the class names of `wgtrain train`, from a file (one
//! name a line) or a comma-separated list, and how the other commands
//! print a class with its name.

use std::path::Path;

use anyhow::{bail, Context, Result};
use wgtrain::model::check_class_names;

/// The names `value` gives for a model of `classes` classes: the lines of
/// the file `value` when such a file exists (blank lines at its end are
/// ignored), else the comma-separated list `value` (which then needs a
/// comma). Each is checked as the model file checks them; a bad name is
/// named with its file and line.
pub(crate) fn parse(value: &str, classes: usize) -> Result<Vec<String>> {
    let path = Path::new(value);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--class-names: cannot read {} (one class name a line)", path.display()))?;
        let mut names: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
        while names.last().is_some_and(|n| n.trim().is_empty()) {
            names.pop();
        }
        if names.len() != classes {
            bail!(
                "--class-names: {} holds {} names (lines) but the model has {classes} classes; give one name a line, in class order",
                path.display(),
                names.len()
            );
        }
        return check(&names, classes).map_err(|(line, m)| match line {
            Some(line) => anyhow::anyhow!("--class-names: {} line {line}: {m}", path.display()),
            None => anyhow::anyhow!("--class-names: {}: {m}", path.display()),
        });
    }
    if !value.contains(',') {
        bail!("--class-names {value}: no such file, and not a comma-separated list of names (`a,b,c`)");
    }
    let names: Vec<String> = value.split(',').map(|n| n.trim().to_string()).collect();
    check(&names, classes).map_err(|(at, m)| match at {
        Some(at) => anyhow::anyhow!("--class-names: name {at} of the list: {m}"),
        None => anyhow::anyhow!("--class-names {value}: {m}"),
    })
}

/// `names` when they pass [`check_class_names`], else the position (from
/// 1) of the first bad one, if one is to blame, and the message.
fn check(names: &[String], classes: usize) -> std::result::Result<Vec<String>, (Option<usize>, String)> {
    check_class_names(names, classes).map_err(|m| {
        // The position the message gives ("class name N ..."), if any.
        let at = m
            .strip_prefix("class name ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        (at, m)
    })?;
    Ok(names.to_vec())
}

/// `class` with its name when there are names: `3 Dress`, else `3`.
pub(crate) fn label(names: &[String], class: usize) -> String {
    match names.get(class) {
        Some(n) => format!("{class} {n}"),
        None => class.to_string(),
    }
}
