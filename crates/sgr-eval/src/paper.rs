//! The paper's reported numbers (Roth et al., Tables 1, 3 and 4), for reports that put ours beside them.
//! Accuracies in percent, method names as this workspace spells them.

/// One row of the paper's white-box table: TEST, RAND, FGM, FGSM, PGD (%), FOOL (ρ).
pub type WhiteboxPaperRow = (&'static str, [f64; 5], f64);

/// Table 3, MNIST, ε = 32/255.
pub const MNIST_WHITEBOX_EPS32: [WhiteboxPaperRow; 9] = [
    ("clean", [99.4, 99.4, 98.0, 89.1, 44.8], 0.159),
    ("wdecay", [99.4, 99.3, 99.4, 88.2, 59.8], 0.209),
    ("pgd", [99.5, 99.5, 99.5, 98.8, 98.3], 0.423),
    ("fgsm", [99.4, 99.4, 99.2, 98.5, 96.9], 0.325),
    ("gn", [99.4, 99.3, 99.3, 94.2, 90.0], 0.307),
    ("sgr-grad", [99.5, 99.5, 99.5, 94.3, 88.5], 0.294),
    ("sgr-sign", [99.5, 99.5, 99.5, 94.9, 89.5], 0.301),
    ("fgsm-sgr", [99.5, 99.5, 99.5, 94.0, 83.2], 0.284),
    ("pgd-sgr", [99.6, 99.5, 99.5, 94.4, 84.3], 0.294),
];

/// Table 3, CIFAR-10, ε = 4/255.
pub const CIFAR10_WHITEBOX_EPS4: [WhiteboxPaperRow; 9] = [
    ("clean", [84.0, 83.5, 82.7, 32.4, 17.0], 0.012),
    ("wdecay", [84.3, 84.1, 83.4, 26.5, 11.0], 0.015),
    ("pgd", [81.8, 81.9, 81.8, 62.7, 57.8], 0.050),
    ("fgsm", [82.1, 82.1, 82.2, 61.6, 54.0], 0.046),
    ("gn", [80.3, 80.2, 80.0, 52.2, 46.7], 0.040),
    ("sgr-grad", [80.2, 80.0, 80.2, 53.7, 48.1], 0.042),
    ("sgr-sign", [80.5, 80.4, 80.4, 53.3, 47.2], 0.040),
    ("fgsm-sgr", [81.7, 81.3, 81.6, 53.6, 46.7], 0.039),
    ("pgd-sgr", [81.5, 81.2, 81.3, 52.5, 46.5], 0.039),
];

/// The column (and row) order of the paper's MNIST transfer tables.
pub const MNIST_TRANSFER_ORDER: [&str; 9] = [
    "clean", "wdecay", "pgd", "fgsm", "gn", "sgr-grad", "sgr-sign", "fgsm-sgr", "pgd-sgr",
];

/// Table 4, MNIST, ε = 32/255, PGD-40: per row model, TEST then one entry per source in
/// [`MNIST_TRANSFER_ORDER`].
pub const MNIST_TRANSFER_EPS32: [(&str, [f64; 10]); 9] = [
    (
        "clean",
        [99.4, 24.7, 94.2, 98.4, 98.7, 95.8, 95.4, 95.7, 97.1, 96.2],
    ),
    (
        "wdecay",
        [99.4, 97.7, 48.3, 98.1, 98.7, 95.4, 95.2, 96.4, 97.4, 97.0],
    ),
    (
        "pgd",
        [99.5, 99.3, 99.3, 98.2, 99.2, 99.1, 99.1, 99.3, 99.3, 99.2],
    ),
    (
        "fgsm",
        [99.5, 99.2, 99.1, 99.0, 96.0, 98.8, 98.9, 99.0, 99.1, 99.0],
    ),
    (
        "gn",
        [99.4, 98.8, 98.0, 98.5, 98.9, 88.9, 96.3, 97.9, 98.3, 98.0],
    ),
    (
        "sgr-grad",
        [99.5, 98.9, 98.2, 98.9, 99.1, 96.4, 86.4, 97.7, 98.5, 98.0],
    ),
    (
        "sgr-sign",
        [99.5, 98.8, 98.3, 98.8, 98.9, 97.5, 97.2, 86.9, 98.1, 97.9],
    ),
    (
        "fgsm-sgr",
        [99.5, 98.7, 97.8, 98.7, 98.7, 97.3, 97.0, 97.1, 72.9, 96.9],
    ),
    (
        "pgd-sgr",
        [99.6, 98.7, 98.0, 98.8, 98.8, 97.3, 96.8, 97.3, 97.5, 79.5],
    ),
];

/// Table 4, MNIST, ε = 64/255, PGD-40 (PGD and FGSM models trained at ε = 64), same layout as
/// [`MNIST_TRANSFER_EPS32`].
pub const MNIST_TRANSFER_EPS64: [(&str, [f64; 10]); 9] = [
    (
        "clean",
        [99.4, 0.6, 30.3, 79.6, 79.1, 31.5, 32.6, 38.1, 72.4, 65.8],
    ),
    (
        "wdecay",
        [99.4, 80.6, 0.4, 84.0, 88.4, 26.4, 27.4, 46.7, 81.3, 75.6],
    ),
    (
        "pgd",
        [99.5, 98.8, 97.7, 62.6, 90.7, 89.7, 89.7, 92.4, 97.7, 97.2],
    ),
    (
        "fgsm",
        [99.5, 98.0, 93.7, 76.8, 38.6, 81.8, 81.8, 84.0, 94.6, 92.1],
    ),
    (
        "gn",
        [99.4, 96.3, 86.5, 91.3, 96.4, 9.3, 55.0, 79.5, 93.2, 90.7],
    ),
    (
        "sgr-grad",
        [99.5, 96.1, 84.7, 90.2, 95.3, 50.1, 4.5, 68.8, 89.6, 82.9],
    ),
    (
        "sgr-sign",
        [99.5, 95.1, 83.6, 88.8, 93.4, 59.0, 52.7, 2.4, 85.3, 82.7],
    ),
    (
        "fgsm-sgr",
        [99.5, 90.8, 74.9, 85.6, 85.7, 54.0, 48.5, 48.4, 0.4, 49.1],
    ),
    (
        "pgd-sgr",
        [99.6, 92.9, 78.1, 87.8, 89.8, 50.9, 44.0, 56.1, 62.1, 0.5],
    ),
];

/// The paper's white-box row for `method` on `dataset` (`mnist` at ε = 32, `cifar10` at ε = 4), if it has one.
pub fn whitebox_row(dataset: &str, method: &str) -> Option<&'static WhiteboxPaperRow> {
    let table: &[WhiteboxPaperRow] = match dataset {
        "mnist" | "mnist-subset" => &MNIST_WHITEBOX_EPS32,
        "cifar10" | "cifar10-sample" => &CIFAR10_WHITEBOX_EPS4,
        _ => return None,
    };
    table.iter().find(|r| r.0 == method)
}

/// The paper's MNIST transfer entry for (row model, source model) at ε = 32 or 64 (in 1/255); `None` at other
/// budgets or for methods outside the table.
pub fn mnist_transfer(eps_255: f64, target: &str, source: &str) -> Option<f64> {
    let table = if (eps_255 - 32.0).abs() < 1e-9 {
        &MNIST_TRANSFER_EPS32
    } else if (eps_255 - 64.0).abs() < 1e-9 {
        &MNIST_TRANSFER_EPS64
    } else {
        return None;
    };
    let row = table.iter().find(|r| r.0 == target)?;
    let col = MNIST_TRANSFER_ORDER.iter().position(|&s| s == source)?;
    Some(row.1[col + 1])
}
