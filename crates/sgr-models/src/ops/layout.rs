//! Conversions between candle's `(B, C, H, W)` and the ops' channels-last `(B, H, W, C)` layout.

use candle_core::{Result, Tensor};

/// `(B, C, H, W)` → `(B, H, W, C)`, contiguous (a reshape when `C = 1`).
pub fn to_nhwc(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if c == 1 {
        x.reshape((b, h, w, 1))
    } else {
        x.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// `(B, H, W, C)` → `(B, C, H, W)`, contiguous (a reshape when `C = 1`).
pub fn to_nchw(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if c == 1 {
        x.reshape((b, 1, h, w))
    } else {
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}
