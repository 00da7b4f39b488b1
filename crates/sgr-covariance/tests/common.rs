//! Helpers shared by the covariance tests: dense reference products and tensors.
#![allow(dead_code, unused_imports)]
use candle_core::{DType, Tensor};
pub use sgr_testutil::{max_abs, max_abs_diff, rand_tensor};

/// `Σ v` through the dense matrix, row by row.
pub fn dense_product(dense: &Tensor, v: &Tensor) -> Tensor {
    let b = v.dim(0).unwrap();
    let d = dense.dim(0).unwrap();
    v.to_dtype(DType::F64)
        .unwrap()
        .reshape((b, d))
        .unwrap()
        .matmul(dense)
        .unwrap()
        .reshape(v.dims())
        .unwrap()
}
