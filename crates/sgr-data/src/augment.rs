//! The paper's augmentation (sec. 4.1): pad, random crop back to size, horizontal flip with p = 1/2.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which parts of the augmentation are on. Every part is switchable; defaults depend on the data set
/// (see [`crate::DatasetName::default_augment`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Pad by `pad` pixels of value `pad_value` on each side, then crop a random window of the original size.
    pub crop: bool,
    /// Mirror left-right with probability one half.
    pub flip: bool,
    /// Padding width in pixels (the paper: 4).
    pub pad: usize,
    /// Pixel value (in [0, 1]) used for padding: 0 for MNIST, 0.5 (mid-range) for CIFAR-10.
    pub pad_value: f32,
}

impl Augment {
    pub fn none() -> Self {
        Self {
            crop: false,
            flip: false,
            pad: 4,
            pad_value: 0.0,
        }
    }

    pub fn is_identity(&self) -> bool {
        !(self.flip || (self.crop && self.pad > 0))
    }

    /// Parses a comma-separated list of parts: `none`, `crop`, `flip` (e.g. `crop,flip`).
    pub fn parse_parts(spec: &str, pad_value: f32) -> Result<Self, String> {
        let mut aug = Self {
            pad_value,
            ..Self::none()
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "crop" => aug.crop = true,
                "flip" => aug.flip = true,
                other => {
                    return Err(format!(
                        "unknown augmentation '{other}': expected none, crop, flip or a list such as crop,flip"
                    ));
                }
            }
        }
        Ok(aug)
    }

    /// A short description such as `crop(pad 4, fill 0.5)+flip` or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.crop {
            parts.push(format!("crop(pad {}, fill {})", self.pad, self.pad_value));
        }
        if self.flip {
            parts.push("flip".to_string());
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join("+")
        }
    }

    /// Writes one augmented image (`c × h × w`, values in [0, 1]) into `out`, drawing its randomness from `rng`.
    ///
    /// The same random draws are made whatever the image holds, so a batch is reproducible from its seed.
    pub fn apply<R: Rng>(
        &self,
        src: &[u8],
        (c, h, w): (usize, usize, usize),
        out: &mut [f32],
        rng: &mut R,
    ) {
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(out.len(), c * h * w);
        let p = self.pad as i64;
        let (dy, dx) = if self.crop && p > 0 {
            (
                rng.random_range(0..=2 * p) - p,
                rng.random_range(0..=2 * p) - p,
            )
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.random_bool(0.5);
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            let out_plane = &mut out[ch * h * w..(ch + 1) * h * w];
            for i in 0..h {
                let si = i as i64 + dy;
                for j in 0..w {
                    let jj = if flip { w - 1 - j } else { j };
                    let sj = jj as i64 + dx;
                    out_plane[i * w + j] = if si < 0 || sj < 0 || si >= h as i64 || sj >= w as i64 {
                        self.pad_value
                    } else {
                        plane[si as usize * w + sj as usize] as f32 / 255.0
                    };
                }
            }
        }
    }
}
