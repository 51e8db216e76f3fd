//! Property tests of every decoder of outside bytes: the IDX reader (plain
//! and gzip), the CSV readers (training data and predict's inputs), the
//! model and checkpoint loaders, and the image decoder. Each is fed
//! arbitrary bytes and mutations of a valid file (bytes overwritten,
//! inserted, removed, the file cut short) and must return a value or a
//! typed error: a panic fails the case. The readers of raw formats must
//! also not reserve more memory than the input's size implies: the largest
//! single allocation made while decoding is measured by this binary's
//! allocator and bounded by a multiple of the input's length.
//!
//! The number of cases per property is fixed (`CASES`, overridable with
//! `PROPTEST_CASES`), so CI runs the same amount of work every time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use proptest::sample::Index;

use wgtrain::backend::TrainSpec;
use wgtrain::cpu::CpuBackend;
use wgtrain::data::{builtin, CsvOptions, Normalize, Preprocess};
use wgtrain::infer::input::{decode_image, parse_csv, parse_idx, CsvInputOptions};
use wgtrain::model::{AnyModel, CompressedMlp, CompressionInfo};
use wgtrain::train::{fingerprint, train_resumable, Checkpointing, TrainConfig};
use wgtrain::Mlp;

/// The system allocator, recording the largest single request made on
/// each thread while that thread is measuring.
struct PeakAlloc;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only const-initialised thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Run `f`, returning its value and the largest single allocation it made
/// on this thread.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let v = f();
    MEASURING.with(|m| m.set(false));
    (v, PEAK.with(Cell::get))
}

/// Cases per property: enough to find the shallow bugs in CI's time.
const CASES: u32 = 300;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // Failures are regression tests below, not files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One change to a valid file.
#[derive(Debug, Clone)]
enum Edit {
    Overwrite(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    /// Set a whole 4-byte word (a header field, a length) to a value.
    Word(Index, u32),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Overwrite(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<Index>().prop_map(Edit::Remove),
        2 => (any::<Index>(), word()).prop_map(|(i, w)| Edit::Word(i, w)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// Words worth trying in a header: edges, and IDX magic numbers of 0 to
/// 4 dimensions (so a mutation can change what the rest of a file means).
fn word() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(0x7fff_ffff),
        (0u32..5).prop_map(|n| 0x0800 | n),
        any::<u32>(),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..6)
}

fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        if v.is_empty() {
            break;
        }
        match e {
            Edit::Overwrite(i, b) => {
                let i = i.index(v.len());
                v[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(v.len() + 1);
                v.insert(i, *b);
            }
            Edit::Remove(i) => {
                let i = i.index(v.len());
                v.remove(i);
            }
            Edit::Word(i, w) => {
                let i = i.index(v.len());
                for (k, b) in w.to_be_bytes().iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            Edit::Truncate(i) => {
                let i = i.index(v.len());
                v.truncate(i);
            }
        }
    }
    v
}

/// Allocations a raw-format reader may make for `len` bytes of input: the
/// values it holds (f32 per byte at most, 4x) with room for the growth of
/// a vector, plus a fixed allowance for small bookkeeping.
fn raw_bound(len: usize) -> usize {
    16 * len + (1 << 16)
}

// ---- valid files to mutate ----

fn idx_images() -> Vec<u8> {
    let (n, h, w) = (3u32, 4u32, 5u32);
    let mut v = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        v.extend(d.to_be_bytes());
    }
    v.extend((0..n * h * w).map(|i| (i * 7 % 256) as u8));
    v
}

fn idx_labels() -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend(3u32.to_be_bytes());
    v.extend([1, 0, 2]);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const CSV: &str = "a,b,c,label\n0,1,2,0\n3,4,5,1\n6,7,8,2\n9,10,11,0\n1.5,2.5,3.5,1\n";

fn small_model() -> &'static Mlp {
    static M: OnceLock<Mlp> = OnceLock::new();
    M.get_or_init(|| {
        let d = builtin::load(0.2, 0).unwrap();
        let p = Preprocess::fit(Normalize::Scale, &d);
        Mlp::new(&[d.dim(), 6, d.classes], 0, p, d.shape.clone()).unwrap()
    })
}

fn model_file() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| small_model().to_safetensors().unwrap())
}

fn int8_model_file() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let info = CompressionInfo {
            quantization: "int8".into(),
            ..CompressionInfo::default()
        };
        CompressedMlp::from_mlp(small_model(), true, info)
            .to_safetensors()
            .unwrap()
            .0
    })
}

/// A checkpoint of one epoch of Adam on the built-in digits.
fn checkpoint_file() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let data = Arc::new(builtin::load(0.2, 0).unwrap());
        let model = small_model().clone();
        let spec = TrainSpec::new(64, wgtrain::optim::Optimizer::Adam(wgtrain::optim::Adam::default()));
        let cfg = TrainConfig::constant(1, 0.01, 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpointing {
            dir: dir.path().to_path_buf(),
            each_epoch: true,
            every_steps: None,
            keep: 1,
            fingerprint: fingerprint(&data, &model, &spec, &cfg),
            extra: "{}".into(),
            stop: None,
            resume: None,
        };
        let mut backend = CpuBackend::new(model, data.clone(), spec).unwrap();
        train_resumable(&mut backend, &data, &cfg, &ck, &mut |_| {}).unwrap();
        let files = wgtrain::checkpoint::list(dir.path()).unwrap();
        std::fs::read(files.last().unwrap()).unwrap()
    })
}

fn png_8x8() -> &'static [u8] {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let img = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    })
}

// ---- the decoders, each returning whether it accepted the input ----

fn idx(bytes: &[u8]) -> bool {
    let p = Path::new("fuzz-images-idx3-ubyte");
    let a = wgtrain::data::idx::parse(bytes, p, 3, "images").is_ok();
    let b = wgtrain::data::idx::parse(bytes, p, 1, "labels").is_ok();
    a || b
}

fn predict_idx(bytes: &[u8]) -> bool {
    parse_idx(bytes, "fuzz.idx", 20, &[4, 5]).is_ok()
}

/// The training data reader on a pair of files on disk, gzip-compressed.
fn idx_pair_gz(images: &[u8], labels: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let i = dir.path().join("x-images-idx3-ubyte.gz");
    let l = dir.path().join("x-labels-idx1-ubyte.gz");
    std::fs::write(&i, images).unwrap();
    std::fs::write(&l, labels).unwrap();
    wgtrain::data::idx::load_pair(&i, &l).is_ok()
}

fn csv_data(text: &str) -> bool {
    wgtrain::data::csv::parse_str(text, Path::new("fuzz.csv"), CsvOptions::default()).is_ok()
}

fn csv_inputs(text: &str) -> bool {
    parse_csv(text, "fuzz.csv", 3, &[3], CsvInputOptions { drop_col: Some(-1) }).is_ok()
}

fn any_model(bytes: &[u8]) -> bool {
    AnyModel::from_safetensors(bytes, Path::new("fuzz.safetensors")).is_ok()
}

fn checkpoint(bytes: &[u8]) -> bool {
    wgtrain::checkpoint::parse(Path::new("fuzz.ckpt"), bytes).is_ok()
}

fn image(bytes: &[u8]) -> bool {
    decode_image(bytes, &[28, 28], "fuzz.png").is_ok()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn idx_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let (_, peak) = peak_of(|| (idx(&bytes), predict_idx(&bytes)));
        prop_assert!(peak <= raw_bound(bytes.len()), "{peak} bytes reserved for {} bytes of input", bytes.len());
    }

    #[test]
    fn idx_mutated(images in edits(), labels in edits()) {
        let i = mutate(&idx_images(), &images);
        let l = mutate(&idx_labels(), &labels);
        let (_, peak) = peak_of(|| (idx(&i), idx(&l), predict_idx(&i)));
        let len = i.len().max(l.len());
        prop_assert!(peak <= raw_bound(len), "{peak} bytes reserved for {len} bytes of input");
    }

    #[test]
    fn idx_gzip_mutated(images in edits(), labels in edits(), compressed in any::<bool>()) {
        // Mutate the IDX bytes inside the gzip stream, or the stream itself.
        let (i, l) = if compressed {
            (mutate(&gzip(&idx_images()), &images), mutate(&gzip(&idx_labels()), &labels))
        } else {
            (gzip(&mutate(&idx_images(), &images)), gzip(&mutate(&idx_labels(), &labels)))
        };
        idx_pair_gz(&i, &l);
    }

    #[test]
    fn csv_arbitrary_text(text in "[0-9a-z,.\\-+eE\" \n\r]{0,200}") {
        let (_, peak) = peak_of(|| (csv_data(&text), csv_inputs(&text)));
        prop_assert!(peak <= raw_bound(text.len()), "{peak} bytes reserved for {} bytes of input", text.len());
    }

    #[test]
    fn csv_mutated(e in edits()) {
        let bytes = mutate(CSV.as_bytes(), &e);
        let text = String::from_utf8_lossy(&bytes);
        csv_data(&text);
        csv_inputs(&text);
    }

    #[test]
    fn model_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (ok, peak) = peak_of(|| any_model(&bytes));
        prop_assert!(!ok, "random bytes loaded as a model");
        prop_assert!(peak <= raw_bound(bytes.len()), "{peak} bytes reserved for {} bytes of input", bytes.len());
    }

    #[test]
    fn model_mutated(e in edits(), int8 in any::<bool>()) {
        let base = if int8 { int8_model_file() } else { model_file() };
        let bytes = mutate(base, &e);
        let (_, peak) = peak_of(|| any_model(&bytes));
        prop_assert!(peak <= raw_bound(bytes.len()), "{peak} bytes reserved for {} bytes of input", bytes.len());
    }

    #[test]
    fn checkpoint_mutated(e in edits()) {
        let bytes = mutate(checkpoint_file(), &e);
        let (_, peak) = peak_of(|| checkpoint(&bytes));
        prop_assert!(peak <= raw_bound(bytes.len()), "{peak} bytes reserved for {} bytes of input", bytes.len());
    }

    #[test]
    fn image_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        image(&bytes);
    }

    #[test]
    fn image_mutated(e in edits()) {
        image(&mutate(png_8x8(), &e));
    }
}

/// The valid files the mutations start from are accepted, so the
/// properties above mutate files that decode, not files that fail early.
#[test]
fn seeds_are_valid() {
    assert!(idx(&idx_images()) && idx(&idx_labels()) && predict_idx(&idx_images()));
    assert!(idx_pair_gz(&gzip(&idx_images()), &gzip(&idx_labels())));
    assert!(csv_data(CSV) && csv_inputs(CSV));
    assert!(any_model(model_file()) && any_model(int8_model_file()));
    assert!(checkpoint(checkpoint_file()));
    assert!(image(png_8x8()));
}

/// The allocation bound is not vacuous: decoding a valid file of 2,000
/// images is measured as reserving at least the file's values.
#[test]
fn peak_measures_the_decoder() {
    let mut v = vec![0, 0, 8, 3];
    for d in [2000u32, 4, 5] {
        v.extend(d.to_be_bytes());
    }
    v.resize(16 + 2000 * 20, 1);
    let (ok, peak) = peak_of(|| idx(&v));
    assert!(ok);
    assert!(peak >= 2000 * 20, "peak {peak}");
}

/// Found by `idx_arbitrary_bytes`: an IDX file of zero dimensions
/// (magic 0x00000800) given to predict.
#[test]
fn predict_idx_without_dimensions_is_refused() {
    assert!(!predict_idx(&[0, 0, 8, 0]));
    assert!(!predict_idx(&[0, 0, 8, 0, 1, 2, 3]));
}

/// A header claiming two billion images is checked against the file
/// before anything is reserved.
#[test]
fn huge_idx_header_reserves_nothing() {
    let mut v = vec![0, 0, 8, 3];
    for d in [2_000_000_000u32, 28, 28] {
        v.extend(d.to_be_bytes());
    }
    v.extend([0u8; 100]);
    let (ok, peak) = peak_of(|| idx(&v) || predict_idx(&v));
    assert!(!ok);
    assert!(peak <= raw_bound(v.len()), "peak {peak}");
}
