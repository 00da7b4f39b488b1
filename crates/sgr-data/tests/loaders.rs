//! Loader tests: the embedded subset, the real files in `../shared/data` (where present), and every kind of
//! bad input on fixtures made here.
#![allow(clippy::unwrap_used)] // in closures and helpers, where `?` cannot reach; test fns use `?`

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use sgr_data::{
    Augment, DataError, DatasetName, Split, load, load_cifar_dir, load_idx_dir, load_split,
    seeded_rng,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} not found (full-size loader checks need the shared data folder)",
            p.display()
        );
        None
    }
}

#[test]
fn embedded_subset_is_the_head_of_mnist() -> TestResult {
    let d = load(DatasetName::MnistSubset, None)?;
    assert_eq!((d.train.len(), d.test.len()), (5000, 1000));
    assert_eq!(d.train.shape(), (1, 28, 28));
    assert_eq!(&d.train.labels[..5], &[5, 0, 4, 1, 9]);
    assert_eq!(&d.test.labels[..5], &[7, 2, 1, 0, 4]);
    assert_eq!(d.train.pixels.len(), 5000 * 784);
    // Every class is present and pixel values span the full byte range.
    assert!(d.train.class_counts().iter().all(|&c| c > 350));
    assert_eq!(d.train.pixels.iter().max(), Some(&255));
    // c of Algorithm 1: the mean diagonal of the data covariance (mean per-pixel variance), computed
    // independently with numpy as x.var(0).mean() = 0.06714357139314323. (The pooled variance of all
    // pixels, x.var() = 0.0946, is a different quantity.)
    let c = d.train.mean_pixel_variance();
    assert!(
        (c - 0.06714357139314323).abs() < 1e-9,
        "mean pixel variance {c}"
    );
    Ok(())
}

#[test]
fn full_mnist_label_counts_match_the_published_ones() -> TestResult {
    let Some(root) = shared_data() else {
        return Ok(());
    };
    let d = load(DatasetName::Mnist, Some(&root.join("mnist")))?;
    assert_eq!(
        d.train.class_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        d.test.class_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The embedded subset is exactly the first images of the full set.
    let sub = load(DatasetName::MnistSubset, None)?;
    assert_eq!(
        &d.train.pixels[..sub.train.pixels.len()],
        &sub.train.pixels[..]
    );
    assert_eq!(&d.test.labels[..1000], &sub.test.labels[..]);
    Ok(())
}

#[test]
fn fashion_mnist_loads() -> TestResult {
    let Some(root) = shared_data() else {
        return Ok(());
    };
    let d = load(DatasetName::FashionMnist, Some(&root.join("fashion-mnist")))?;
    assert_eq!((d.train.len(), d.test.len()), (60000, 10000));
    assert_eq!(d.train.class_counts(), [6000; 10]);
    assert_eq!(d.test.class_counts(), [1000; 10]);
    Ok(())
}

#[test]
fn cifar_sample_loads_with_any_record_count() -> TestResult {
    let Some(root) = shared_data() else {
        return Ok(());
    };
    let t = load_split(
        DatasetName::Cifar10,
        Some(&root.join("cifar10-sample")),
        Split::Test,
    )?;
    assert_eq!(t.len(), 20);
    assert_eq!(t.shape(), (3, 32, 32));
    assert_eq!(
        t.labels,
        vec![3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    );
    // No training batches there: a clear error naming the folder and the files looked for.
    let e = load_split(
        DatasetName::Cifar10,
        Some(&root.join("cifar10-sample")),
        Split::Train,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cifar10-sample") && msg.contains("data_batch_1.bin"),
        "{msg}"
    );
    Ok(())
}

// ---------- fixtures ----------

fn idx_images(n: u32, rows: u32, cols: u32, fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..(n * rows * cols) as usize).map(fill));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn mnist_fixture(dir: &Path, n_img: u32, labels: &[u8], compress: bool) {
    let imgs = idx_images(n_img, 28, 28, |i| (i % 251) as u8);
    let lbls = idx_labels(labels);
    for (stem, bytes) in [
        ("t10k-images-idx3-ubyte", imgs),
        ("t10k-labels-idx1-ubyte", lbls),
    ] {
        if compress {
            write(dir, &format!("{stem}.gz"), &gz(&bytes));
        } else {
            write(dir, stem, &bytes);
        }
    }
}

#[test]
fn raw_and_gzip_idx_give_the_same_data() -> TestResult {
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    mnist_fixture(a.path(), 3, &[1, 2, 3], true);
    mnist_fixture(b.path(), 3, &[1, 2, 3], false);
    let x = load_idx_dir(DatasetName::Mnist, a.path(), Split::Test)?;
    let y = load_idx_dir(DatasetName::Mnist, b.path(), Split::Test)?;
    assert_eq!(x.pixels, y.pixels);
    assert_eq!(x.labels, vec![1, 2, 3]);
    assert_eq!(x.pixels[..5], [0, 1, 2, 3, 4]);
    Ok(())
}

fn err_msg(r: Result<impl std::fmt::Debug, DataError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn wrong_magic_number_names_the_file() -> TestResult {
    let d = tempfile::tempdir()?;
    mnist_fixture(d.path(), 2, &[0, 1], false);
    // Swap: a labels file where the images should be.
    write(d.path(), "t10k-images-idx3-ubyte", &idx_labels(&[0, 1]));
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("magic"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn truncated_file_names_the_file() -> TestResult {
    let d = tempfile::tempdir()?;
    mnist_fixture(d.path(), 2, &[0, 1], false);
    let full = idx_images(2, 28, 28, |_| 7);
    write(d.path(), "t10k-images-idx3-ubyte", &full[..full.len() - 10]);
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(
        msg.contains("t10k-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );
    // A truncated header, too.
    write(d.path(), "t10k-images-idx3-ubyte", &full[..10]);
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(msg.contains("truncated"), "{msg}");
    Ok(())
}

#[test]
fn truncated_gzip_names_the_file() -> TestResult {
    let d = tempfile::tempdir()?;
    let z = gz(&idx_images(50, 28, 28, |i| (i * 7 % 256) as u8));
    write(d.path(), "t10k-images-idx3-ubyte.gz", &z[..z.len() / 2]);
    write(d.path(), "t10k-labels-idx1-ubyte", &idx_labels(&[0; 50]));
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
    Ok(())
}

#[test]
fn image_label_count_mismatch_names_both_files() -> TestResult {
    let d = tempfile::tempdir()?;
    mnist_fixture(d.path(), 3, &[0, 1], true);
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(
        msg.contains("t10k-images")
            && msg.contains("t10k-labels")
            && msg.contains("3 images")
            && msg.contains("2 labels"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn wrong_image_size_and_bad_labels_are_errors() -> TestResult {
    let d = tempfile::tempdir()?;
    write(
        d.path(),
        "t10k-images-idx3-ubyte",
        &idx_images(1, 32, 32, |_| 0),
    );
    write(d.path(), "t10k-labels-idx1-ubyte", &idx_labels(&[0]));
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(msg.contains("32x32") && msg.contains("28x28"), "{msg}");
    mnist_fixture(d.path(), 2, &[0, 12], false);
    let msg = err_msg(load_idx_dir(DatasetName::Mnist, d.path(), Split::Test));
    assert!(
        msg.contains("t10k-labels-idx1-ubyte") && msg.contains("label 12"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn missing_files_and_folders_are_named() -> TestResult {
    let d = tempfile::tempdir()?;
    let msg = err_msg(load_idx_dir(
        DatasetName::FashionMnist,
        d.path(),
        Split::Train,
    ));
    assert!(
        msg.contains("fashion-mnist") && msg.contains("train-images-idx3-ubyte.gz"),
        "{msg}"
    );
    let nowhere = d.path().join("nope");
    let msg = err_msg(load(DatasetName::Mnist, Some(&nowhere)));
    assert!(msg.contains("nope"), "{msg}");
    Ok(())
}

#[test]
fn cifar_size_not_a_multiple_of_the_record_is_an_error() -> TestResult {
    let d = tempfile::tempdir()?;
    write(d.path(), "test_batch.bin", &vec![1u8; 3073 * 2 + 5]);
    let msg = err_msg(load_cifar_dir(d.path(), Split::Test));
    assert!(
        msg.contains("test_batch.bin") && msg.contains("3073"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn cifar_records_decode_channel_planes() -> TestResult {
    let d = tempfile::tempdir()?;
    let mut rec = vec![7u8];
    rec.extend(std::iter::repeat_n(10u8, 1024));
    rec.extend(std::iter::repeat_n(20u8, 1024));
    rec.extend(std::iter::repeat_n(30u8, 1024));
    let mut two = rec.clone();
    two[0] = 2;
    rec.extend(two);
    write(d.path(), "data_batch_1.bin", &rec);
    let t = load_cifar_dir(d.path(), Split::Train)?;
    assert_eq!(t.labels, vec![7, 2]);
    let (x, y) = t.range(0, 2, DType::F32, &Device::Cpu)?;
    assert_eq!(x.dims(), &[2, 3, 32, 32]);
    let v = x.get(0)?.flatten_from(1)?.mean(1)?.to_vec1::<f32>()?;
    assert!((v[0] - 10.0 / 255.0).abs() < 1e-6 && (v[2] - 30.0 / 255.0).abs() < 1e-6);
    assert_eq!(y.to_vec1::<u32>()?, vec![7, 2]);
    // A bad label byte in a CIFAR record.
    rec[0] = 10;
    write(d.path(), "data_batch_1.bin", &rec);
    let msg = err_msg(load_cifar_dir(d.path(), Split::Train));
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("label 10"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn unknown_dataset_name_lists_the_known_ones() -> TestResult {
    let msg = err_msg("imagenet".parse::<DatasetName>());
    assert!(
        msg.contains("imagenet") && msg.contains("mnist") && msg.contains("cifar10"),
        "{msg}"
    );
    assert_eq!("CIFAR-10".parse::<DatasetName>()?, DatasetName::Cifar10);
    assert_eq!(
        "fashion_mnist".parse::<DatasetName>()?,
        DatasetName::FashionMnist
    );
    Ok(())
}

#[test]
fn download_without_hub_feature_points_to_data_dir() -> TestResult {
    if cfg!(feature = "hub") {
        return Ok(());
    }
    let msg = err_msg(load(DatasetName::Mnist, None));
    assert!(msg.contains("mnist") && msg.contains("--data-dir"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "one line, not a stack: {msg}");
    Ok(())
}

// ---------- augmentation ----------

fn one_pixel_image(h: usize, w: usize, at: (usize, usize)) -> Vec<u8> {
    let mut img = vec![0u8; h * w];
    img[at.0 * w + at.1] = 255;
    img
}

#[test]
fn crop_shifts_content_and_pads_with_the_fill_value() -> TestResult {
    let (h, w) = (10, 12);
    let src = one_pixel_image(h, w, (5, 6));
    let aug = Augment {
        crop: true,
        flip: false,
        pad: 4,
        pad_value: 0.5,
    };
    let mut seen_shifts = std::collections::HashSet::new();
    for s in 0..200 {
        let mut rng = seeded_rng(1, &[s]);
        let mut out = vec![0f32; h * w];
        aug.apply(&src, (1, h, w), &mut out, &mut rng);
        let hot: Vec<usize> = (0..h * w).filter(|&k| out[k] == 1.0).collect();
        assert_eq!(
            hot.len(),
            1,
            "the bright pixel is always inside a ±4 crop of a centred pixel"
        );
        let (i, j) = (hot[0] / w, hot[0] % w);
        let (di, dj) = (5 - i as i64, 6 - j as i64);
        assert!(di.abs() <= 4 && dj.abs() <= 4);
        seen_shifts.insert((di, dj));
        // Every other pixel is either a source zero or the pad value.
        assert!(out.iter().all(|&v| v == 0.0 || v == 0.5 || v == 1.0));
        let pads = out.iter().filter(|&&v| v == 0.5).count();
        assert_eq!(
            pads,
            h * w - (h - di.unsigned_abs() as usize) * (w - dj.unsigned_abs() as usize)
        );
    }
    assert!(
        seen_shifts.len() > 40,
        "crops cover the 81 offsets: saw {}",
        seen_shifts.len()
    );
    Ok(())
}

#[test]
fn flip_mirrors_about_half_the_time_and_is_seeded() -> TestResult {
    let (h, w) = (4, 5);
    let src = one_pixel_image(h, w, (1, 0));
    let aug = Augment {
        crop: false,
        flip: true,
        pad: 4,
        pad_value: 0.0,
    };
    let mut flips = 0;
    for s in 0..400 {
        let mut out = vec![0f32; h * w];
        aug.apply(&src, (1, h, w), &mut out, &mut seeded_rng(3, &[s]));
        if out[w + w - 1] == 1.0 {
            flips += 1;
        } else {
            assert_eq!(out[w], 1.0);
        }
        let mut again = vec![0f32; h * w];
        aug.apply(&src, (1, h, w), &mut again, &mut seeded_rng(3, &[s]));
        assert_eq!(out, again, "same seed, same augmentation");
    }
    assert!((150..250).contains(&flips), "{flips} flips of 400");
    Ok(())
}

#[test]
fn batches_are_reproducible_and_identity_augmentation_is_exact() -> TestResult {
    let d = load(DatasetName::MnistSubset, None)?;
    let idx = [3usize, 1, 4, 1, 5];
    let aug = Augment {
        crop: true,
        flip: true,
        pad: 4,
        pad_value: 0.0,
    };
    let a = d
        .train
        .batch(
            &idx,
            Some((&aug, &mut seeded_rng(9, &[1]))),
            DType::F32,
            &Device::Cpu,
        )?
        .0;
    let b = d
        .train
        .batch(
            &idx,
            Some((&aug, &mut seeded_rng(9, &[1]))),
            DType::F32,
            &Device::Cpu,
        )?
        .0;
    let c = d
        .train
        .batch(
            &idx,
            Some((&aug, &mut seeded_rng(9, &[2]))),
            DType::F32,
            &Device::Cpu,
        )?
        .0;
    let diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| {
        x.sub(y)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&a, &b), 0.0);
    assert!(diff(&a, &c) > 0.0);
    let plain = d.train.batch(&idx, None, DType::F32, &Device::Cpu)?.0;
    let none = d
        .train
        .batch(
            &idx,
            Some((&Augment::none(), &mut seeded_rng(9, &[1]))),
            DType::F32,
            &Device::Cpu,
        )?
        .0;
    assert_eq!(diff(&plain, &none), 0.0);
    let v = plain.flatten_all()?.to_vec1::<f32>()?;
    assert!(v.iter().all(|&p| (0.0..=1.0).contains(&p)));
    assert_eq!(v[3 * 784..][..784].len(), 784);
    assert_eq!(v[784 + 152], d.train.pixels[784 + 152] as f32 / 255.0);
    Ok(())
}

#[test]
fn augment_specs_parse() -> TestResult {
    assert_eq!(
        Augment::parse_parts("crop,flip", 0.5)?,
        Augment {
            crop: true,
            flip: true,
            pad: 4,
            pad_value: 0.5
        }
    );
    assert!(Augment::parse_parts("none", 0.0)?.is_identity());
    assert!(
        Augment::parse_parts("rotate", 0.0)
            .unwrap_err()
            .contains("rotate")
    );
    assert_eq!(
        DatasetName::Cifar10.default_augment().describe(),
        "crop(pad 4, fill 0.5)+flip"
    );
    assert_eq!(DatasetName::Mnist.default_augment().describe(), "none");
    Ok(())
}

#[test]
fn epoch_orders_are_seeded_permutations() -> TestResult {
    let a = sgr_data::epoch_order(100, 7, 0);
    assert_eq!(a, sgr_data::epoch_order(100, 7, 0));
    assert_ne!(a, sgr_data::epoch_order(100, 7, 1));
    assert_ne!(a, sgr_data::epoch_order(100, 8, 0));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn split_off_last_holds_out_the_tail_in_order() -> Result<(), DataError> {
    let full = load(DatasetName::MnistSubset, None)?;
    let mut train = full.train.clone();
    let val = train.split_off_last(1000, "validation");
    assert_eq!((train.len(), val.len()), (4000, 1000));
    assert_eq!(val.name, "mnist-subset/validation");
    assert_eq!(val.shape(), full.train.shape());
    // The two parts concatenate to the original set, byte for byte.
    assert_eq!(train.labels[..], full.train.labels[..4000]);
    assert_eq!(val.labels[..], full.train.labels[4000..]);
    assert_eq!(train.pixels[..], full.train.pixels[..4000 * 784]);
    assert_eq!(val.pixels[..], full.train.pixels[4000 * 784..]);
    // Asking for more than there is takes everything; zero takes nothing.
    let mut t = full.train.clone();
    assert_eq!(t.split_off_last(0, "v").len(), 0);
    assert_eq!(t.len(), 5000);
    assert_eq!(t.split_off_last(9999, "v").len(), 5000);
    assert!(t.is_empty());
    Ok(())
}
