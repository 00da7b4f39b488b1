"""Independent check that an sgr checkpoint means the same network to PyTorch users.

    python3 tests/pytorch_compat.py CHECKPOINT.safetensors FIXTURE.safetensors

FIXTURE holds `x` (B, C, H, W) images in [0, 1] and `logits` (B, 10) computed by sgr. This script rebuilds the
paper's CNN from the checkpoint's tensors by *name* with PyTorch's conventions (Conv2d weights [out, in, kh, kw]
applied as cross-correlation, Linear y = x W^T + b, flatten in (C, H, W) order) in plain numpy, and, where torch
is installed, as a real `torch.nn.Module` loaded with `load_state_dict(strict=True)`. It prints one JSON line and
exits non-zero when predictions differ.
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file

NAMES = [f"conv{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")] + [
    f"fc{i}.{p}" for i in range(1, 4) for p in ("weight", "bias")
]


def standardize(x):
    b = x.shape[0]
    n = x[0].size
    flat = x.reshape(b, -1)
    mean = flat.mean(1, keepdims=True)
    std = flat.std(1, keepdims=True)  # population std
    return ((flat - mean) / np.maximum(std, 1.0 / math.sqrt(n))).reshape(x.shape)


def conv3x3(x, w, b):
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # B, C, H-2, W-2, 3, 3
    return np.einsum("bchwij,ocij->bohw", win, w, optimize=True) + b[None, :, None, None]


def pool(x):
    bsz, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(bsz, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def numpy_forward(p, x):
    relu = lambda t: np.maximum(t, 0)
    x = standardize(x)
    x = relu(conv3x3(x, p["conv1.weight"], p["conv1.bias"]))
    x = pool(relu(conv3x3(x, p["conv2.weight"], p["conv2.bias"])))
    x = relu(conv3x3(x, p["conv3.weight"], p["conv3.bias"]))
    x = pool(relu(conv3x3(x, p["conv4.weight"], p["conv4.bias"])))
    x = x.reshape(x.shape[0], -1)
    x = relu(x @ p["fc1.weight"].T + p["fc1.bias"])
    x = relu(x @ p["fc2.weight"].T + p["fc2.bias"])
    return x @ p["fc3.weight"].T + p["fc3.bias"]


def torch_forward(p, x):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self, c, convs, hidden, flat):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c, convs[0], 3), nn.Conv2d(convs[0], convs[1], 3)
            self.conv3, self.conv4 = nn.Conv2d(convs[1], convs[2], 3), nn.Conv2d(convs[2], convs[3], 3)
            self.fc1, self.fc2, self.fc3 = nn.Linear(flat, hidden[0]), nn.Linear(hidden[0], hidden[1]), nn.Linear(hidden[1], 10)

        def forward(self, x):
            n = x[0].numel()
            std = x.flatten(1).std(1, unbiased=False).clamp_min(1 / math.sqrt(n))
            x = (x - x.flatten(1).mean(1).view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))

    convs = [p[f"conv{i}.weight"].shape[0] for i in range(1, 5)]
    net = Net(p["conv1.weight"].shape[1], convs, [p["fc1.weight"].shape[0], p["fc2.weight"].shape[0]], p["fc1.weight"].shape[1])
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in p.items()}, strict=True)
    with torch.no_grad():
        return net(torch.from_numpy(x.copy())).numpy(), torch.__version__


def main():
    ckpt, fixture = sys.argv[1], sys.argv[2]
    params = {k: v.astype(np.float64) for k, v in load_file(ckpt).items()}
    missing = [n for n in NAMES if n not in params]
    extra = [n for n in params if n not in NAMES]
    if missing or extra:
        print(json.dumps({"ok": False, "missing": missing, "unexpected": extra}))
        sys.exit(1)
    fx = load_file(fixture)
    x, ours = fx["x"].astype(np.float64), fx["logits"].astype(np.float64)
    ref = numpy_forward(params, x)
    report = {
        "n": int(x.shape[0]),
        "numpy_max_abs_diff": float(np.abs(ref - ours).max()),
        "numpy_same_predictions": bool((ref.argmax(1) == ours.argmax(1)).all()),
    }
    ok = report["numpy_same_predictions"] and report["numpy_max_abs_diff"] < 1e-3
    try:
        import torch  # noqa: F401
    except ImportError:
        report["torch"] = "not installed"
    else:
        t, version = torch_forward({k: v.astype(np.float32) for k, v in load_file(ckpt).items()}, x.astype(np.float32))
        report["torch"] = version
        report["torch_max_abs_diff"] = float(np.abs(t - ours).max())
        report["torch_same_predictions"] = bool((t.argmax(1) == ours.argmax(1)).all())
        ok = ok and report["torch_same_predictions"] and report["torch_max_abs_diff"] < 1e-3
    report["ok"] = bool(ok)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
