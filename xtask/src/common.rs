//! Helpers shared by the commands: logging, flag parsers, terminal detection.

use std::io::IsTerminal;

use sgr_data::DatasetName;
use sgr_models::DeviceKind;

pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // hf-hub logs its own retries at ERROR; the download error we return already says what failed.
    let filter = EnvFilter::try_from_env("SGR_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hf_hub=off,hf_xet=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

pub fn parse_dataset(s: &str) -> Result<DatasetName, String> {
    s.parse::<DatasetName>().map_err(|e| e.to_string())
}

pub fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse::<DeviceKind>()
}
