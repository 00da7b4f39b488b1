//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, transparently decompressing it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    decode_maybe_gz(path, raw)
}

pub(crate) fn decode_maybe_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_owned(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(
    path: &Path,
    bytes: &[u8],
    header: usize,
    magic: u32,
    what: &'static str,
) -> Result<()> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            expected: header,
            found: bytes.len(),
        });
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_owned(),
            expected: magic,
            found,
            what,
        });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            expected: header,
            found: bytes.len(),
        });
    }
    Ok(())
}

/// Decoded IDX images: `n` images of `rows × cols` bytes, row-major.
#[derive(Debug)]
pub(crate) struct IdxImages {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

pub(crate) fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages> {
    check_header(path, bytes, 16, IMAGES_MAGIC, "images (idx3-ubyte)")?;
    let n = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    let expected = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .and_then(|v| v.checked_add(16))
        .ok_or_else(|| DataError::Truncated {
            path: path.to_owned(),
            expected: usize::MAX,
            found: bytes.len(),
        })?;
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            expected,
            found: bytes.len(),
        });
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels: bytes[16..expected].to_vec(),
    })
}

pub(crate) fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    check_header(path, bytes, 8, LABELS_MAGIC, "labels (idx1-ubyte)")?;
    let n = be_u32(bytes, 4) as usize;
    let expected = n + 8;
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            expected,
            found: bytes.len(),
        });
    }
    let labels = bytes[8..expected].to_vec();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(DataError::BadLabel {
            path: path.to_owned(),
            index,
            label,
        });
    }
    Ok(labels)
}
