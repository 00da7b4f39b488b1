//! Data for the SGR experiments: MNIST and Fashion-MNIST from IDX files, CIFAR-10 from its binary layout,
//! an embedded 5,000/1,000-image MNIST subset that needs no network, and the paper's seeded augmentation.
//!
//! Pixels are kept as bytes and turned into `[0, 1]` tensors batch by batch
//! ([`ImageSet::batch`]); normalisation happens inside the model, never here.
//!
//! ```
//! use sgr_data::{DatasetName, load};
//! let data = load(DatasetName::MnistSubset, None)?;
//! assert_eq!((data.train.len(), data.test.len()), (5000, 1000));
//! # Ok::<(), sgr_data::DataError>(())
//! ```

mod augment;
mod cifar;
mod error;
#[cfg(feature = "hub")]
mod hub;
mod idx;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use augment::Augment;
pub use error::{DataError, Result};

/// The data sets this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// The first 5,000 training and 1,000 test images of MNIST, embedded in the binary (the default).
    MnistSubset,
    Mnist,
    FashionMnist,
    Cifar10,
}

impl DatasetName {
    pub const ALL: [DatasetName; 4] = [
        DatasetName::MnistSubset,
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::MnistSubset => "mnist-subset",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }

    /// (channels, height, width) of one image.
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            DatasetName::Cifar10 => (3, 32, 32),
            _ => (1, 28, 28),
        }
    }

    /// Padding value for the crop augmentation: black for the digit sets, mid-range grey for CIFAR-10
    /// (the paper shifts CIFAR by −0.5 and pads with zeros, which is the same thing in `[0, 1]` units).
    pub fn pad_value(self) -> f32 {
        match self {
            DatasetName::Cifar10 => 0.5,
            _ => 0.0,
        }
    }

    /// The default augmentation. The paper pads, crops and flips for both data sets, but a mirrored digit
    /// is often another digit and measurements on the MNIST subset show crop and flip cost accuracy there,
    /// so the digit sets default to none and CIFAR-10 to crop + flip. Every part can be switched.
    pub fn default_augment(self) -> Augment {
        let pad_value = self.pad_value();
        match self {
            DatasetName::Cifar10 => Augment {
                crop: true,
                flip: true,
                pad: 4,
                pad_value,
            },
            _ => Augment {
                pad_value,
                ..Augment::none()
            },
        }
    }

    /// Human-readable class names, index = label.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            DatasetName::Cifar10 => [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ],
            DatasetName::FashionMnist => [
                "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                "bag", "boot",
            ],
            _ => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        }
    }

    fn known() -> String {
        Self::ALL
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let name = match norm.as_str() {
            "mnist-subset" => DatasetName::MnistSubset,
            "mnist" => DatasetName::Mnist,
            "fashion-mnist" | "fashionmnist" => DatasetName::FashionMnist,
            "cifar10" | "cifar-10" => DatasetName::Cifar10,
            _ => {
                return Err(DataError::UnknownDataset {
                    name: s.to_string(),
                    known: Self::known(),
                });
            }
        };
        Ok(name)
    }
}

/// Which half of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A set of labelled images stored as bytes in `C × H × W` order per image.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// e.g. `mnist/train`.
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Keeps only the first `n` images (all of them when `n` is larger).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.pixels.truncate(n * self.image_len());
        }
    }

    /// Removes the last `n` images (all of them when `n` is larger) and returns them as a set named
    /// `<dataset>/<name>`: a held-out validation split ("the last 5,000 training images").
    pub fn split_off_last(&mut self, n: usize, name: &str) -> ImageSet {
        let keep = self.len().saturating_sub(n);
        let labels = self.labels.split_off(keep);
        let pixels = self.pixels.split_off(keep * self.image_len());
        let dataset = self.name.split('/').next().unwrap_or(&self.name);
        ImageSet {
            name: format!("{dataset}/{name}"),
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels,
        }
    }

    /// The images at `indices` as a `(B, C, H, W)` tensor with values in `[0, 1]`, and their labels as `u32`.
    ///
    /// With `augment`, each image is augmented with randomness drawn from `rng` in index order.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<(&Augment, &mut ChaCha8Rng)>,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.image_len();
        let mut buf = vec![0f32; indices.len() * d];
        match augment {
            Some((aug, rng)) if !aug.is_identity() => {
                for (k, &i) in indices.iter().enumerate() {
                    aug.apply(
                        &self.pixels[i * d..(i + 1) * d],
                        self.shape(),
                        &mut buf[k * d..(k + 1) * d],
                        rng,
                    );
                }
            }
            _ => {
                for (k, &i) in indices.iter().enumerate() {
                    for (o, &p) in buf[k * d..(k + 1) * d]
                        .iter_mut()
                        .zip(&self.pixels[i * d..(i + 1) * d])
                    {
                        *o = p as f32 / 255.0;
                    }
                }
            }
        }
        let x = Tensor::from_vec(
            buf,
            (indices.len(), self.channels, self.height, self.width),
            &Device::Cpu,
        )?
        .to_dtype(dtype)?
        .to_device(device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i] as u32).collect();
        let y = Tensor::from_vec(labels, indices.len(), &Device::Cpu)?.to_device(device)?;
        Ok((x, y))
    }

    /// Images `start..end` in order, without augmentation.
    pub fn range(
        &self,
        start: usize,
        end: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let idx: Vec<usize> = (start..end.min(self.len())).collect();
        self.batch(&idx, None, dtype, device)
    }

    /// The average per-pixel variance of the set in `[0, 1]` units: the mean diagonal entry of the data
    /// covariance matrix, the constant `c` of Algorithm 1.
    pub fn mean_pixel_variance(&self) -> f64 {
        let d = self.image_len();
        let n = self.len() as f64;
        let mut sum = vec![0f64; d];
        let mut sum_sq = vec![0f64; d];
        for img in self.pixels.chunks_exact(d) {
            for (k, &p) in img.iter().enumerate() {
                let v = p as f64 / 255.0;
                sum[k] += v;
                sum_sq[k] += v * v;
            }
        }
        sum.iter()
            .zip(&sum_sq)
            .map(|(s, s2)| s2 / n - (s / n) * (s / n))
            .sum::<f64>()
            / d as f64
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut counts = [0; 10];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// A training and a test set.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: ImageSet,
    pub test: ImageSet,
}

/// Where the data came from, for run records.
pub fn describe_source(name: DatasetName, data_dir: Option<&Path>) -> String {
    match (name, data_dir) {
        (_, Some(dir)) => dir.display().to_string(),
        (DatasetName::MnistSubset, None) => "embedded (assets/mnist-subset)".to_string(),
        (_, None) => "hugging face hub cache".to_string(),
    }
}

/// Loads both splits of `name`: from `data_dir` when given, from the embedded subset for
/// [`DatasetName::MnistSubset`], else through the Hugging Face hub (feature `hub`).
pub fn load(name: DatasetName, data_dir: Option<&Path>) -> Result<Splits> {
    Ok(Splits {
        train: load_split(name, data_dir, Split::Train)?,
        test: load_split(name, data_dir, Split::Test)?,
    })
}

/// Loads one split; see [`load`].
pub fn load_split(name: DatasetName, data_dir: Option<&Path>, split: Split) -> Result<ImageSet> {
    let _span =
        tracing::info_span!("load", dataset = name.as_str(), split = split.as_str()).entered();
    let set = match (name, data_dir) {
        (DatasetName::Cifar10, Some(dir)) => load_cifar_dir(dir, split)?,
        (_, Some(dir)) => load_idx_dir(name, dir, split)?,
        (DatasetName::MnistSubset, None) => embedded_subset(split)?,
        (_, None) => download(name, split)?,
    };
    tracing::debug!(images = set.len(), "loaded");
    Ok(set)
}

#[cfg(feature = "hub")]
fn download(name: DatasetName, split: Split) -> Result<ImageSet> {
    hub::load(name, split)
}

#[cfg(not(feature = "hub"))]
fn download(name: DatasetName, _split: Split) -> Result<ImageSet> {
    Err(DataError::NoHub {
        dataset: name.to_string(),
    })
}

fn idx_stems(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images", "train-labels"),
        Split::Test => ("t10k-images", "t10k-labels"),
    }
}

fn find_file(
    dataset: DatasetName,
    dir: &Path,
    what: &str,
    candidates: &[String],
) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(DataError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "--data-dir is not a directory",
            ),
        });
    }
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            dataset: dataset.to_string(),
            what: what.to_string(),
            dir: dir.to_owned(),
            tried: candidates.join(", "),
        })
}

/// Loads MNIST or Fashion-MNIST IDX files (raw or `.gz`) from `dir`.
pub fn load_idx_dir(name: DatasetName, dir: &Path, split: Split) -> Result<ImageSet> {
    let (img_stem, lbl_stem) = idx_stems(split);
    let candidates = |stem: &str, kind: &str| {
        vec![
            format!("{stem}-{kind}-ubyte.gz"),
            format!("{stem}-{kind}-ubyte"),
            format!("{stem}.{kind}-ubyte"),
            format!("{stem}.{kind}-ubyte.gz"),
        ]
    };
    let img_path = find_file(
        name,
        dir,
        &format!("{} images", split.as_str()),
        &candidates(img_stem, "idx3"),
    )?;
    let lbl_path = find_file(
        name,
        dir,
        &format!("{} labels", split.as_str()),
        &candidates(lbl_stem, "idx1"),
    )?;
    let images = idx::parse_images(&img_path, &idx::read_maybe_gz(&img_path)?)?;
    let labels = idx::parse_labels(&lbl_path, &idx::read_maybe_gz(&lbl_path)?)?;
    idx_set(name, split, &img_path, images, &lbl_path, labels)
}

fn idx_set(
    name: DatasetName,
    split: Split,
    img_path: &Path,
    images: idx::IdxImages,
    lbl_path: &Path,
    labels: Vec<u8>,
) -> Result<ImageSet> {
    let (c, h, w) = name.image_shape();
    if (images.rows, images.cols) != (h, w) || c != 1 {
        return Err(DataError::BadImageSize {
            path: img_path.to_owned(),
            expected: format!("{h}x{w}"),
            found: format!("{}x{}", images.rows, images.cols),
        });
    }
    if images.n != labels.len() {
        return Err(DataError::CountMismatch {
            images: img_path.to_owned(),
            n_images: images.n,
            labels: lbl_path.to_owned(),
            n_labels: labels.len(),
        });
    }
    Ok(ImageSet {
        name: format!("{name}/{}", split.as_str()),
        channels: 1,
        height: h,
        width: w,
        pixels: images.pixels,
        labels,
    })
}

/// Loads CIFAR-10 binary batches from `dir` (or its `cifar-10-batches-bin/` subfolder): `data_batch_1..5.bin`
/// for training, `test_batch.bin` (or any `test_batch*.bin`) for testing. Files may hold any number of records.
pub fn load_cifar_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if nested.is_dir() {
        nested.as_path()
    } else {
        dir
    };
    if !dir.is_dir() {
        return Err(DataError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "--data-dir is not a directory",
            ),
        });
    }
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5)
            .map(|k| dir.join(format!("data_batch_{k}.bin")))
            .filter(|p| p.is_file())
            .collect(),
        Split::Test => {
            let exact = dir.join("test_batch.bin");
            if exact.is_file() {
                vec![exact]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|source| DataError::Io {
                        path: dir.to_owned(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("test_batch") && n.ends_with(".bin"))
                    })
                    .collect();
                found.sort();
                found
            }
        }
    };
    if files.is_empty() {
        let tried = match split {
            Split::Train => "data_batch_1.bin .. data_batch_5.bin",
            Split::Test => "test_batch.bin, test_batch*.bin",
        };
        return Err(DataError::MissingFile {
            dataset: "cifar10".into(),
            what: format!("{} batches", split.as_str()),
            dir: dir.to_owned(),
            tried: tried.into(),
        });
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|source| DataError::Io {
            path: f.clone(),
            source,
        })?;
        let (p, l) = cifar::parse(f, &bytes)?;
        pixels.extend(p);
        labels.extend(l);
    }
    Ok(ImageSet {
        name: format!("cifar10/{}", split.as_str()),
        channels: 3,
        height: 32,
        width: 32,
        pixels,
        labels,
    })
}

static SUBSET_TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../assets/mnist-subset/train-images-idx3-ubyte.gz");
static SUBSET_TRAIN_LABELS: &[u8] =
    include_bytes!("../../../assets/mnist-subset/train-labels-idx1-ubyte.gz");
static SUBSET_TEST_IMAGES: &[u8] =
    include_bytes!("../../../assets/mnist-subset/t10k-images-idx3-ubyte.gz");
static SUBSET_TEST_LABELS: &[u8] =
    include_bytes!("../../../assets/mnist-subset/t10k-labels-idx1-ubyte.gz");

pub(crate) fn embedded_subset(split: Split) -> Result<ImageSet> {
    let (img, lbl, img_name, lbl_name) = match split {
        Split::Train => (
            SUBSET_TRAIN_IMAGES,
            SUBSET_TRAIN_LABELS,
            "<embedded>/train-images-idx3-ubyte.gz",
            "<embedded>/train-labels-idx1-ubyte.gz",
        ),
        Split::Test => (
            SUBSET_TEST_IMAGES,
            SUBSET_TEST_LABELS,
            "<embedded>/t10k-images-idx3-ubyte.gz",
            "<embedded>/t10k-labels-idx1-ubyte.gz",
        ),
    };
    let (img_path, lbl_path) = (Path::new(img_name), Path::new(lbl_name));
    let images = idx::parse_images(img_path, &idx::decode_maybe_gz(img_path, img.to_vec())?)?;
    let labels = idx::parse_labels(lbl_path, &idx::decode_maybe_gz(lbl_path, lbl.to_vec())?)?;
    idx_set(
        DatasetName::MnistSubset,
        split,
        img_path,
        images,
        lbl_path,
        labels,
    )
}

/// The stream tags of [`seeded_rng`]: each random use draws from its own tag, so no two uses share numbers.
/// (Most are ASCII of a short name; the values are fixed, since changing one changes every result drawn
/// from it.)
pub mod streams {
    /// The data order of an epoch (`"SHUF"`).
    pub const SHUFFLE: u64 = 0x5348_5546;
    /// The augmentation of a training batch (`"AUG1"`).
    pub const AUGMENT: u64 = 0x4155_4731;
    /// The noise of the lrc training method (`"LRC"`).
    pub const LRC_TRAINING: u64 = 0x4C52_4300;
    /// The random start of PGD in pgd training (`"PGD"`).
    pub const PGD_TRAINING: u64 = 0x5047_4400;
    /// APGD-CE's random starts, one stream per example.
    pub const APGD: u64 = 0xA9D0;
    /// APGD-T's random starts; the target's rank is added shifted left by 16.
    pub const APGD_TARGETED: u64 = 0xA9D1;
    /// Square's initial stripes.
    pub const SQUARE_INIT: u64 = 0x5A0;
    /// Square's iterations; the segment index is added shifted left by 16.
    pub const SQUARE_SEGMENT: u64 = 0x5A1;
    /// The white-box table's random noise (RAND), per batch.
    pub const WHITEBOX_NOISE: u64 = 1;
    /// The correlated-noise evaluation's draws, per batch.
    pub const LRC_EVAL: u64 = 2;
}

/// A ChaCha8 generator for a seed and a stream of integers (epoch, batch, …): independent streams that do
/// not depend on how many numbers an earlier stream drew, so a run resumed mid-epoch repeats itself exactly.
pub fn seeded_rng(seed: u64, stream: &[u64]) -> ChaCha8Rng {
    // SplitMix64 finaliser over the seed and each stream element.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h = mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
    for &s in stream {
        h = mix(h ^ mix(s.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// The order in which epoch `epoch` visits `n` training images.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut seeded_rng(seed, &[streams::SHUFFLE, epoch]));
    order
}
