//! Structured image covariances, their estimation and sampling, and a fast differentiable `Σ v` for Candle.
//!
#![doc = include_str!("../README.md")]

mod covfun;
mod cuda;
mod ema;
mod error;
mod estimate;
mod fft;
mod io;
mod kernel;
pub mod linalg;
mod plan;
mod psd;
mod repr;
mod sample;
mod stationary;

pub use covfun::CovFun;
#[cfg(feature = "cuda")]
pub use cuda::kernel_ready as cuda_kernel_ready;
pub use ema::{Ema, LinComb, MeanEma};
pub use error::{CovError, Result};
pub use io::{from_tensors, load, save, to_tensors};
pub use kernel::{ChannelStructure, KernelSet, MatvecPath};
pub use plan::{CpuPath, CpuPlan};
pub use repr::{Covariance, Dense, Identity, Scaled};
pub use sample::{CirculantSampler, DenseSampler};
pub use stationary::Stationary;
