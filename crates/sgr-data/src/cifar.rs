//! The CIFAR-10 binary layout: records of 1 label byte followed by 1024 R, 1024 G and 1024 B bytes.

use std::path::Path;

use crate::error::{DataError, Result};

pub(crate) const RECORD: usize = 1 + 3 * 32 * 32;

/// Parses any number of CIFAR-10 records; returns (pixels in CHW order per image, labels).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.len() % RECORD != 0 {
        return Err(DataError::BadCifarSize {
            path: path.to_owned(),
            size: bytes.len(),
        });
    }
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0];
        if label > 9 {
            return Err(DataError::BadLabel {
                path: path.to_owned(),
                index,
                label,
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok((pixels, labels))
}
