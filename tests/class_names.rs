//! Class names end to end through the `wgtrain` binary: given at training
//! time (a file or a list), stored in the model file, kept by every command
//! that writes a model (compress, average, resume, --init, distill) and
//! shown by eval and predict. The stored names are read back here with a
//! parser of the safetensors header of its own, not wgtrain's reader.

use std::path::Path;
mod common;

use common::{text, wgtrain};
use std::process::Output;

fn ok(args: &[&str]) -> Output {
    let o = wgtrain(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    o
}

/// The ten Fashion-MNIST names the repository ships (the built-in digits
/// have ten classes too, so they name those in these runs).
fn shipped() -> Vec<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist.classes");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `class_names` metadata of a safetensors file, read from its header
/// directly: 8 bytes of little-endian header length, then the JSON header.
fn stored_names(path: &Path) -> Option<Vec<String>> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let v = header["__metadata__"].get("class_names")?.as_str()?.to_string();
    Some(serde_json::from_str(&v).unwrap())
}

/// The tensor data of a safetensors file (what follows its header; the
/// metadata map is written in no fixed order).
fn tensor_bytes(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

const SMALL: &[&str] = &[
    "--data", "builtin", "--device", "cpu", "--hidden", "16", "--epochs", "2",
];

fn train(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend(SMALL);
    args.extend(extra);
    wgtrain(&args)
}

#[test]
fn names_from_a_file_are_stored_and_eval_and_predict_show_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.safetensors");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist.classes");
    let o = train(&["--class-names", file.to_str().unwrap(), "--save", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let names = shipped();
    assert_eq!(names.len(), 10);
    assert_eq!(names[3], "Dress");
    assert_eq!(stored_names(&m).as_deref(), Some(&names[..]));

    let ms = m.to_str().unwrap();
    let o = ok(&["eval", "--model", ms, "--data", "builtin", "--device", "cpu"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    // Rows labelled by index and name; long names cut to 12 characters.
    assert!(t.contains(" 3 Dress        |"), "{t}");
    assert!(t.contains(" 0 T-shirt/top  |"), "{t}");
    assert!(t.contains("accuracy per class:") && t.contains("Ankle boot"), "{t}");

    let o = ok(&["eval", "--model", ms, "--data", "builtin", "--device", "cpu", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["class_names"], serde_json::json!(names));
    // Per-class accuracy is the confusion diagonal over the row sums.
    let confusion = v["confusion"].as_array().unwrap();
    let per = v["per_class_accuracy"].as_array().unwrap();
    for (i, row) in confusion.iter().enumerate() {
        let row: Vec<u64> = row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let want = row[i] as f64 / row.iter().sum::<u64>() as f64;
        assert!((per[i].as_f64().unwrap() - want).abs() < 1e-12, "class {i}");
    }

    // Two CSV rows of 64 pixels for predict.
    let csv = dir.path().join("rows.csv");
    let row = |k: usize| {
        (0..64)
            .map(|j| ((j * k) % 17).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    std::fs::write(&csv, format!("{}\n{}\n", row(3), row(5))).unwrap();
    let o = ok(&[
        "predict",
        "--model",
        ms,
        csv.to_str().unwrap(),
        "--json",
        "--top-k",
        "2",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let class = l["class"].as_u64().unwrap() as usize;
        assert_eq!(l["name"].as_str(), Some(names[class].as_str()), "{l}");
        for t in l["top_k"].as_array().unwrap() {
            assert_eq!(
                t["name"].as_str(),
                Some(names[t["class"].as_u64().unwrap() as usize].as_str())
            );
        }
    }
    let o = ok(&["predict", "--model", ms, csv.to_str().unwrap(), "--top-k", "1"]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let class = lines[0]["class"].as_u64().unwrap() as usize;
    assert!(t.contains(&format!(": {class} {} (", names[class])), "{t}");
}

#[test]
fn a_model_without_names_prints_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.safetensors");
    let o = train(&["--save", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(&m), None);
    let o = ok(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.get("class_names").is_none() && v.get("per_class_accuracy").is_none(),
        "{v}"
    );
    let o = ok(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "builtin",
        "--device",
        "cpu",
    ]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(t.contains("  true |") && !t.contains("per class"), "{t}");
}

/// The output of a training run that must fail cleanly (no model, no panic).
fn refused(extra: &[&str]) -> String {
    let o = train(extra);
    let t = text(&o);
    assert!(!o.status.success() && !t.contains("panicked"), "{extra:?}: {t}");
    t
}

#[test]
fn bad_names_are_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("names.txt");
    let lines = ["a", "b", "c", "b", "e", "f", "g", "h", "i", "j"];
    std::fs::write(&f, lines.join("\n") + "\n\n").unwrap();
    let t = refused(&["--class-names", f.to_str().unwrap()]);
    assert!(t.contains("names.txt line 4") && t.contains("also class name 2"), "{t}");
    std::fs::write(&f, "a\nb\n\n").unwrap();
    let t = refused(&["--class-names", f.to_str().unwrap()]);
    assert!(
        t.contains("names.txt") && t.contains("holds 2 names") && t.contains("10 classes"),
        "{t}"
    );
    let t = refused(&["--class-names", "a,b,c"]);
    assert!(t.contains("3 class names for a model of 10 classes"), "{t}");
    let t = refused(&["--class-names", "a,b,,d,e,f,g,h,i,j"]);
    assert!(t.contains("name 3 of the list") && t.contains("empty"), "{t}");
    let t = refused(&["--class-names", "no-such-file"]);
    assert!(t.contains("no such file") && t.contains("no-such-file"), "{t}");
}

#[test]
fn compress_average_init_distill_and_resume_keep_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let names: Vec<String> = (0..10).map(|i| format!("digit {i}")).collect();
    let list = names.join(",");
    let ck = p("ck");
    let o = train(&["--class-names", &list, "--save", &p("a"), "--checkpoint-dir", &ck]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(Path::new(&p("a"))), Some(names.clone()));
    let o = train(&["--class-names", &list, "--seed", "3", "--save", &p("b")]);
    assert!(o.status.success(), "{}", text(&o));

    ok(&[
        "compress",
        "--model",
        &p("a"),
        "--out",
        &p("c"),
        "--data",
        "builtin",
        "--quantize",
        "int8",
        "--device",
        "cpu",
    ]);
    assert_eq!(stored_names(Path::new(&p("c"))), Some(names.clone()));
    ok(&["average", &p("a"), &p("b"), "--out", &p("avg")]);
    assert_eq!(stored_names(Path::new(&p("avg"))), Some(names.clone()));

    // --init keeps the file's names unless --class-names replaces them.
    let init = ["--save", &p("i"), "--init", &p("a")];
    let o = wgtrain(
        &[
            &["train", "--data", "builtin", "--device", "cpu", "--epochs", "1"][..],
            &init,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(Path::new(&p("i"))), Some(names.clone()));

    // The student takes its teacher's names.
    let o = wgtrain(&[
        "distill",
        "--teacher",
        &p("a"),
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--save",
        &p("s"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(Path::new(&p("s"))), Some(names.clone()));

    // Resuming the finished run saves the same model with the names the
    // checkpoint holds.
    let o = wgtrain(&["train", "--resume", &ck, "--save", &p("r")]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(Path::new(&p("r"))), Some(names.clone()));
    assert!(
        tensor_bytes(Path::new(&p("r"))) == tensor_bytes(Path::new(&p("a"))),
        "other weights"
    );
}

#[test]
fn a_resumed_run_keeps_the_checkpoints_names_when_the_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("names.txt");
    let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    std::fs::write(&f, names.join("\n")).unwrap();
    let ck = dir.path().join("ck");
    let o = train(&[
        "--class-names",
        f.to_str().unwrap(),
        "--checkpoint-dir",
        ck.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(&f).unwrap();
    let r = dir.path().join("r.safetensors");
    let o = wgtrain(&["train", "--resume", ck.to_str().unwrap(), "--save", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stored_names(&r), Some(names));
}

#[test]
fn tune_stores_the_names_in_every_trial_and_the_best_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let f = dir.path().join("names.txt");
    std::fs::write(&f, shipped().join("\n")).unwrap();
    ok(&[
        "tune",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--no-prune",
        "--out",
        out.to_str().unwrap(),
        "--class-names",
        f.to_str().unwrap(),
    ]);
    let trials: Vec<_> = std::fs::read_dir(out.join("trials"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert_eq!(trials.len(), 2, "{trials:?}");
    let mut models = trials;
    models.push(out.join("best.safetensors"));
    for m in &models {
        assert_eq!(stored_names(m), Some(shipped()), "{}", m.display());
    }
    // Refused like train's, before any trial runs.
    let o = wgtrain(&[
        "tune",
        "--data",
        "builtin",
        "--device",
        "cpu",
        "--trials",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--class-names",
        "a,b",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("--class-names"),
        "{}",
        text(&o)
    );
}
