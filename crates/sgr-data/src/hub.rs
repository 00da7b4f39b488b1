//! Downloads through the Hugging Face hub (feature `hub`): the parquet conversions of the public data sets
//! (`refs/convert/parquet`), cached in the standard hub cache. Images in those files are PNG bytes.

use std::path::Path;

use hf_hub::HFClientSync;
use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use crate::error::{DataError, Result};
use crate::{DatasetName, ImageSet, Split};

fn download_error(name: DatasetName, e: impl std::fmt::Display) -> DataError {
    // One line: the first line of the underlying error, never a stack of HTTP errors.
    let reason = e
        .to_string()
        .lines()
        .next()
        .unwrap_or("unknown error")
        .to_string();
    DataError::Download {
        dataset: name.to_string(),
        reason,
    }
}

pub(crate) fn load(name: DatasetName, split: Split) -> Result<ImageSet> {
    let (owner, repo, prefix) = match name {
        DatasetName::Mnist => ("ylecun", "mnist", "mnist"),
        DatasetName::FashionMnist => ("zalando-datasets", "fashion_mnist", "fashion_mnist"),
        DatasetName::Cifar10 => ("uoft-cs", "cifar10", "plain_text"),
        DatasetName::MnistSubset => return crate::embedded_subset(split),
    };
    let client = HFClientSync::new().map_err(|e| download_error(name, e))?;
    let repo = client.dataset(owner, repo);
    let mut files = Vec::new();
    for shard in 0..64 {
        let filename = format!("{prefix}/{}/{shard:04}.parquet", split.as_str());
        tracing::info!(dataset = %name, file = %filename, "downloading from the hugging face hub");
        match repo
            .download_file()
            .filename(filename)
            .revision("refs/convert/parquet".to_string())
            .send()
        {
            Ok(path) => files.push(path),
            Err(e) if shard == 0 => return Err(download_error(name, e)),
            Err(_) => break,
        }
    }
    let (c, h, w) = name.image_shape();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        read_parquet(name, f, (c, h, w), &mut pixels, &mut labels)?;
    }
    Ok(ImageSet {
        name: format!("{name}/{}", split.as_str()),
        channels: c,
        height: h,
        width: w,
        pixels,
        labels,
    })
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string()),
    }
}

fn read_parquet(
    name: DatasetName,
    path: &Path,
    (c, h, w): (usize, usize, usize),
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(path, e))?;
    for (index, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| bad(path, e))?;
        let mut image = None;
        let mut label = None;
        for (_, field) in row.get_column_iter() {
            match field {
                Field::Group(sub) => {
                    for (_, f) in sub.get_column_iter() {
                        if let Field::Bytes(b) = f {
                            image = Some(b.data().to_vec());
                        }
                    }
                }
                Field::Long(l) => label = Some(*l),
                Field::Int(l) => label = Some(*l as i64),
                _ => {}
            }
        }
        let (Some(png_bytes), Some(label)) = (image, label) else {
            return Err(bad(
                path,
                format!("row {index} of {name} has no image or label"),
            ));
        };
        if !(0..10).contains(&label) {
            return Err(DataError::BadLabel {
                path: path.to_owned(),
                index,
                label: label.clamp(0, 255) as u8,
            });
        }
        decode_png(path, &png_bytes, (c, h, w), pixels)?;
        labels.push(label as u8);
    }
    Ok(())
}

/// Decodes a PNG into `C × H × W` bytes appended to `out`.
fn decode_png(
    path: &Path,
    bytes: &[u8],
    (c, h, w): (usize, usize, usize),
    out: &mut Vec<u8>,
) -> Result<()> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(|e| bad(path, e))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(path, e))?;
    if (info.height as usize, info.width as usize) != (h, w)
        || info.bit_depth != png::BitDepth::Eight
    {
        return Err(bad(
            path,
            format!(
                "PNG of {}x{} at {:?}, expected {h}x{w} 8-bit",
                info.height, info.width, info.bit_depth
            ),
        ));
    }
    let data = &buf[..info.buffer_size()];
    let src_channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(bad(path, "indexed PNGs are not supported")),
    };
    for ch in 0..c {
        let sc = if src_channels >= 3 { ch } else { 0 };
        out.extend((0..h * w).map(|p| data[p * src_channels + sc]));
    }
    Ok(())
}
