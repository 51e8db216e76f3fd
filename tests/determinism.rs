//! What changes a run's result and what does not, through the binary: the
//! same seed, data, device and thread count give the same model tensors bit
//! for bit (on the CPU, and on a GPU against itself); another seed gives
//! other tensors. Whether the CPU's thread count matters is measured here
//! too, and must agree with what the README says of it.

mod common;

use std::path::Path;

use common::{text, wgtrain};

/// Every tensor of a model file, by name (the metadata, which records
/// settings such as the device, is left aside).
fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// Train 3 epochs of Adam with dropout, shifts and a validation split on
/// the built-in digits (every random stream of a run is used), and return
/// the model's tensors.
fn run(dir: &Path, name: &str, device: &str, threads: &str, seed: &str) -> Vec<(String, Vec<u8>)> {
    let out = dir.join(format!("{name}.safetensors"));
    let o = wgtrain(&[
        "train",
        "--data",
        "builtin",
        "--device",
        device,
        "--threads",
        threads,
        "--seed",
        seed,
        "--hidden",
        "48,24",
        "--epochs",
        "3",
        "--batch",
        "32",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--dropout",
        "0.2",
        "--shift",
        "1",
        "--val-split",
        "0.1",
        "--save",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    tensors(&out)
}

#[test]
fn the_same_seed_device_and_threads_give_the_same_tensors_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(dir.path(), "a", "cpu", "2", "7");
    let b = run(dir.path(), "b", "cpu", "2", "7");
    assert_eq!(a, b, "two runs of the same settings differ");
    let c = run(dir.path(), "c", "cpu", "2", "8");
    assert_ne!(a, c, "another seed gave the same model");
}

/// The README says the CPU's thread count does not change the result: the
/// kernels split rows and output columns over threads, never a sum.
#[test]
fn the_cpu_thread_count_does_not_change_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let one = run(dir.path(), "one", "cpu", "1", "7");
    let two = run(dir.path(), "two", "cpu", "2", "7");
    let three = run(dir.path(), "three", "cpu", "3", "7");
    assert_eq!(one, two, "1 and 2 threads differ");
    assert_eq!(one, three, "1 and 3 threads differ");
}

#[test]
fn a_gpu_against_itself_gives_the_same_tensors() {
    let Some(_) = common::gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = run(dir.path(), "a", "gpu", "0", "7");
    let b = run(dir.path(), "b", "gpu", "0", "7");
    assert_eq!(a, b, "two GPU runs of the same settings differ");
}
