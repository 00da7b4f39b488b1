//! `--device`: names parse, and a GPU device on a build without its feature says how to rebuild.

use sgr_models::{DeviceKind, make_device};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn a_gpu_device_without_its_feature_names_the_flag_to_rebuild_with() -> TestResult {
    assert_eq!("cuda".parse(), Ok(DeviceKind::Cuda));
    assert_eq!("GPU".parse(), Ok(DeviceKind::Cuda));
    assert!("tpu".parse::<DeviceKind>().is_err());
    assert!(make_device(DeviceKind::Cpu).is_ok());
    if !candle_core::utils::cuda_is_available() {
        let err = make_device(DeviceKind::Cuda)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--features cuda") && err.contains("no CUDA support"),
            "{err}"
        );
    }
    if !candle_core::utils::metal_is_available() {
        let err = make_device(DeviceKind::Metal)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--features metal"), "{err}");
    }
    Ok(())
}
