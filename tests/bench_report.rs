//! `wgtrain bench --report` and `--compare`: the lines `wgtrain bench`
//! prints read back and reported, ratios against the input lines, the
//! roofline against its inputs, refusals naming the file and line, and
//! README's results section regenerated from docs/bench/*.jsonl.

mod common;

use std::path::{Path, PathBuf};

use common::{text, wgtrain};
use wgtrain::bench::report::{compare, markdown, Peaks, Record, Report, Run};

/// `wgtrain bench ARGS` on the CPU: its stdout (the JSON lines).
fn bench_lines(args: &[&str]) -> String {
    let mut all = vec!["bench", "--device", "cpu", "--threads", "2"];
    all.extend(args);
    let o = wgtrain(&all);
    assert!(o.status.success(), "wgtrain {all:?}: {}", text(&o));
    String::from_utf8(o.stdout).expect("utf-8")
}

/// One small run of every CPU benchmark kind, written to `dir/name`.
fn cpu_run(dir: &Path, name: &str) -> PathBuf {
    let mut lines = bench_lines(&[
        "--epoch",
        "--data",
        "builtin",
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--batch",
        "32,64",
        "--hidden",
        "16,32,16x8",
    ]);
    lines += &bench_lines(&["--inference"]);
    lines += &bench_lines(&["--matmul", "--square", "64", "--seconds", "0.02", "--batch", "32"]);
    let p = dir.join(name);
    std::fs::write(&p, lines).expect("write the run");
    p
}

fn read(p: &Path) -> Run {
    Run::read("run", p).expect("a run")
}

#[test]
fn the_lines_of_wgtrain_bench_make_a_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_path = cpu_run(dir.path(), "cpu.jsonl");
    let run = read(&run_path);

    // Every kind is there, and one spelling of the device across kinds.
    let kinds: Vec<&str> = run.records.iter().map(Record::kind).collect();
    for k in ["epoch", "inference", "matmul"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    let devices: std::collections::BTreeSet<&str> = run.records.iter().map(Record::device).collect();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices.first().copied(), Some("cpu (2 threads)"));

    // The models: sizes as --hidden asked, parameters counted from the
    // tensors of a model of those sizes.
    let sizes: Vec<Vec<usize>> = run.epochs().map(|e| e.sizes.clone()).collect();
    let widths = |h: &[usize]| [&[64][..], h, &[10][..]].concat();
    let want: Vec<Vec<usize>> = [&[16][..], &[32], &[16, 8]]
        .iter()
        .flat_map(|h| [widths(h), widths(h)])
        .collect();
    assert_eq!(sizes, want);
    for e in run.epochs() {
        let m = wgtrain::model::Mlp::new(&e.sizes, 0, wgtrain::data::Preprocess::identity(), vec![e.sizes[0]])
            .expect("a model");
        let tensors: usize = m.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum();
        assert_eq!(e.parameters, Some(tensors));
    }
    for p in run.inferences() {
        assert!(p.batch1_p50_us <= p.batch1_p90_us.expect("p90") && p.batch1_p90_us <= Some(p.batch1_p99_us));
    }

    // HTML: every table, every figure as inline SVG, every device and batch.
    let html = dir.path().join("report.html");
    let o = wgtrain(&[
        "bench",
        "--report",
        html.to_str().expect("utf-8"),
        run_path.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let doc = std::fs::read_to_string(&html).expect("the report");
    assert!(doc.starts_with("<!DOCTYPE html>") && doc.trim_end().ends_with("</html>"));
    for tag in ["table", "svg", "figure", "tr", "thead", "tbody"] {
        let open = doc.matches(&format!("<{tag}")).count();
        let close = doc.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}> opened {open} times, closed {close}");
    }
    for id in ["epoch-batch", "epoch-size", "matmul-roofline", "inference-latency"] {
        assert!(doc.contains(&format!("<figure id=\"{id}\">\n<svg")), "no figure {id}");
    }
    for h in ["Epoch time", "Matrix products", "Inference", "Runs"] {
        assert!(doc.contains(&format!("<h2>{h}</h2>")), "no table {h}");
    }
    for h in [
        "steady (s)",
        "GFLOP/s",
        "FLOP/byte",
        "batch-1 p50 (us)",
        "p90 (us)",
        "p99 (us)",
    ] {
        assert!(doc.contains(&format!("<th>{h}</th>")), "no column {h}");
    }
    let epoch_rows = doc
        .lines()
        .filter(|l| l.starts_with("<tr><td>cpu (2 threads)</td><td>64-"))
        .collect::<Vec<_>>();
    assert_eq!(epoch_rows.len(), run.epochs().count());
    for e in run.epochs() {
        let cells = format!(
            "<tr><td>{}</td><td>{}</td>",
            e.device,
            e.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("-")
        );
        assert!(
            epoch_rows
                .iter()
                .any(|r| r.starts_with(&cells) && r.contains(&format!("<td>{}</td>", e.batch))),
            "no row for {cells} batch {}",
            e.batch
        );
    }

    // Markdown: the PNGs beside it, linked by name, and PNGs indeed.
    let md = dir.path().join("report.md");
    let o = wgtrain(&[
        "bench",
        "--report",
        md.to_str().expect("utf-8"),
        &format!("cpu={}", run_path.display()),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let text_md = std::fs::read_to_string(&md).expect("the report");
    for id in ["epoch-batch", "epoch-size", "matmul-roofline", "inference-latency"] {
        let name = format!("report-{id}.png");
        assert!(text_md.contains(&format!("]({name})")), "{name} not linked");
        let bytes = std::fs::read(dir.path().join(&name)).expect("the figure");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    }
    assert!(text_md.contains("| run | file | lines | skipped |"));
    assert!(text_md.contains("| cpu | cpu.jsonl |"));
}

/// `line` with every figure named in `scale` multiplied by its factor.
fn scaled(line: &str, scale: &[(&str, f64)]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(line).expect("JSON");
    for (k, f) in scale {
        if let Some(x) = v.get(*k).and_then(serde_json::Value::as_f64) {
            v[*k] = (x * f).into();
        }
    }
    v.to_string()
}

#[test]
fn compare_divides_the_figures_of_matching_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_text = bench_lines(&[
        "--epoch",
        "--data",
        "builtin",
        "--epochs",
        "2",
        "--max-steps",
        "2",
        "--batch",
        "32,64",
        "--hidden",
        "16",
    ]) + &bench_lines(&["--matmul", "--square", "32", "--seconds", "0.01", "--batch", "16"]);
    let factors = [("steady_epoch_s", 0.5), ("examples_per_s", 2.0), ("gflops", 3.0)];
    // b: every line of a scaled, its first line dropped, and one line of a
    // kind a does not have.
    let mut b_lines: Vec<String> = a_text.lines().skip(1).map(|l| scaled(l, &factors)).collect();
    b_lines.push(
        r#"{"bench":"parallel","device":"x","replicas":2,"batch":8,"step_ms":1.0,"examples_per_s":8000.0}"#.into(),
    );
    let (a_path, b_path) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a_path, &a_text).expect("write a");
    std::fs::write(&b_path, b_lines.join("\n")).expect("write b");
    let (a, b) = (read(&a_path), read(&b_path));
    let c = compare(&a, &b);
    assert_eq!((c.only_a, c.only_b), (1, 1));

    // Each ratio against the figures of the two input lines.
    let json =
        |t: &str| -> Vec<serde_json::Value> { t.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect() };
    let (av, bv) = (json(&a_text), json(&b_lines.join("\n")));
    let mut checked = 0;
    for (la, lb) in av.iter().skip(1).zip(&bv) {
        for (field, figure, higher) in [
            ("steady_epoch_s", "steady epoch (s)", false),
            ("examples_per_s", "examples/s", true),
            ("gflops", "GFLOP/s", true),
        ] {
            let (Some(x), Some(y)) = (la[field].as_f64(), lb[field].as_f64()) else {
                continue;
            };
            let r = c
                .ratios
                .iter()
                .find(|r| r.figure == figure && r.a == x && r.b == y)
                .unwrap_or_else(|| panic!("no ratio for {field} {x} -> {y}"));
            assert_eq!(r.ratio(), y / x);
            assert_eq!(r.speedup(), if higher { y / x } else { x / y });
            assert!(r.speedup() > 1.9, "b is better in every scaled figure: {r:?}");
            checked += 1;
        }
    }
    // The epoch at batch 64 (two figures) and every product (one).
    assert_eq!(checked, 2 + a.matmuls().count(), "every scaled figure checked once");

    // Through the binary: a markdown table on stdout.
    let o = wgtrain(&[
        "bench",
        "--compare",
        a_path.to_str().expect("utf-8"),
        b_path.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("## b against a"), "{out}");
    assert!(
        out.contains("| kind | line | figure | a | b | b/a | speed-up of b |"),
        "{out}"
    );
    assert!(out.contains("| 3.00x |"), "{out}");
}

#[test]
fn bad_inputs_are_refused_with_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = r#"{"bench":"matmul","device":"d","variant":"nn","tile":null,"m":2,"n":2,"k":2,"seconds_per_call":1e-6,"gflops":0.016}"#;
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{good}\n\nnot json\n")).expect("write");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").expect("write");
    let ok = dir.path().join("ok.jsonl");
    std::fs::write(&ok, good).expect("write");
    let out = dir.path().join("r.html");
    let (bad, empty, ok, out) = (
        bad.to_str().expect("utf-8"),
        empty.to_str().expect("utf-8"),
        ok.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    );
    for (args, words) in [
        (vec!["--report", out, bad], format!("{bad}:3: not a JSON line")),
        (vec!["--report", out, empty], format!("{empty}: no benchmark lines")),
        (
            vec!["--report", out, "/no/such/run.jsonl"],
            "/no/such/run.jsonl: no such file".into(),
        ),
        // The arguments are checked before any file is read.
        (
            vec!["--report", "r.pdf", "/no/such/run.jsonl"],
            "give a name ending in .html or .md".into(),
        ),
        (
            vec!["--report", out, "--peak", "GPU=12", "/no/such/run.jsonl"],
            "peak `GPU=12`".into(),
        ),
        (vec!["--compare", ok], "exactly two runs".into()),
        (vec!["--report", out], "give the JSON-lines files".into()),
        (vec![ok], "without --report or --compare".into()),
    ] {
        let mut all = vec!["bench"];
        all.extend(&args);
        let o = wgtrain(&all);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).contains(&words), "{args:?}: {}", text(&o));
    }
}

#[test]
fn the_readme_results_section_is_the_report_of_docs_bench() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs/bench"))
        .expect("docs/bench")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no docs/bench/*.jsonl");
    let rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root).expect("under the root").display().to_string())
        .collect();
    let runs = rel
        .iter()
        .map(|r| {
            let (label, path) = wgtrain::bench::report::split_label(r);
            Run::read(&label, &root.join(path)).expect("a committed run")
        })
        .collect();
    let report = Report::new(runs, Peaks::default(), false);
    let command = format!(
        "wgtrain bench --report docs/bench/report.md --readme README.md {}",
        rel.join(" ")
    );
    let want = markdown::section(&report, &command);
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let have = markdown::find_section(&readme).expect("README.md has no bench-report section");
    assert!(
        have == want,
        "README.md's results section differs from the report of docs/bench/*.jsonl; regenerate it with\n  {command}\n"
    );
    // And docs/bench/report.md holds the same tables.
    let md = std::fs::read_to_string(root.join("docs/bench/report.md")).expect("docs/bench/report.md");
    assert!(
        md.contains(&markdown::tables(&report, 2)),
        "docs/bench/report.md is stale: {command}"
    );
}
