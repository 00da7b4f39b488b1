"""Independent check that an sgr checkpoint means the same network to PyTorch users.

    python3 tests/pytorch_compat.py CHECKPOINT.safetensors FIXTURE.safetensors

FIXTURE holds `x` (B, C, H, W) images in [0, 1] and `logits` (B, 10) computed by sgr, and optionally labels `y`
with sgr's input gradients `grad*` of log softmax(f(x))[y] (one key per code path). This script rebuilds the
paper's CNN from the checkpoint's tensors by *name* with PyTorch's conventions (Conv2d weights [out, in, kh, kw]
applied as cross-correlation, Linear y = x W^T + b, flatten in (C, H, W) order) in plain numpy, with a hand-written
backward pass (max-pool gradients to each window's first maximum, ReLU' = [a > 0], as PyTorch), and, where torch
is installed, as a real `torch.nn.Module` loaded with `load_state_dict(strict=True)` and differentiated by
autograd. It prints one JSON line and exits non-zero when predictions or gradients differ.
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
    return numpy_forward_cache(p, x)[0]


def numpy_forward_cache(p, x):
    relu = lambda t: np.maximum(t, 0)
    s = standardize(x)
    a1 = conv3x3(s, p["conv1.weight"], p["conv1.bias"])
    a2 = conv3x3(relu(a1), p["conv2.weight"], p["conv2.bias"])
    r2 = relu(a2)
    a3 = conv3x3(pool(r2), p["conv3.weight"], p["conv3.bias"])
    a4 = conv3x3(relu(a3), p["conv4.weight"], p["conv4.bias"])
    r4 = relu(a4)
    p4 = pool(r4)
    h1 = p4.reshape(p4.shape[0], -1) @ p["fc1.weight"].T + p["fc1.bias"]
    h2 = relu(h1) @ p["fc2.weight"].T + p["fc2.bias"]
    z = relu(h2) @ p["fc3.weight"].T + p["fc3.bias"]
    return z, dict(x=x, s=s, a1=a1, a2=a2, r2=r2, a3=a3, a4=a4, r4=r4, p4=p4, h1=h1, h2=h2)


def conv3x3_input_grad(dy, w, shape):
    """The adjoint of conv3x3 in its input: dx[b, c, i+di, j+dj] += sum_o dy[b, o, i, j] w[o, c, di, dj]."""
    dx = np.zeros(shape)
    oh, ow = dy.shape[2], dy.shape[3]
    for di in range(3):
        for dj in range(3):
            dx[:, :, di : di + oh, dj : dj + ow] += np.einsum("bohw,oc->bchw", dy, w[:, :, di, dj], optimize=True)
    return dx


def unpool(g, r):
    """Routes g (B, C, H/2, W/2) to the first maximum (row-major) of each 2x2 window of r (B, C, H, W)."""
    bsz, c, h, w = r.shape
    h2, w2 = h // 2, w // 2
    win = r[:, :, : 2 * h2, : 2 * w2].reshape(bsz, c, h2, 2, w2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(bsz, c, h2, w2, 4)
    first = win.argmax(-1)  # numpy returns the first occurrence of the maximum
    out = np.zeros((bsz, c, h2, w2, 4))
    np.put_along_axis(out, first[..., None], g[..., None], axis=-1)
    full = np.zeros(r.shape)
    full[:, :, : 2 * h2, : 2 * w2] = out.reshape(bsz, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(bsz, c, 2 * h2, 2 * w2)
    return full


def numpy_input_grad(p, x, y):
    """grad_x log softmax(f(x))[y], by a hand-written backward pass."""
    z, c = numpy_forward_cache(p, x)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    d = -prob
    d[np.arange(len(y)), y] += 1.0
    d = (d @ p["fc3.weight"]) * (c["h2"] > 0)
    d = (d @ p["fc2.weight"]) * (c["h1"] > 0)
    d = (d @ p["fc1.weight"]).reshape(c["p4"].shape)
    d = unpool(d, c["r4"]) * (c["a4"] > 0)
    d = conv3x3_input_grad(d, p["conv4.weight"], c["a3"].shape) * (c["a3"] > 0)
    pooled = (d.shape[0], p["conv3.weight"].shape[1], c["r2"].shape[2] // 2, c["r2"].shape[3] // 2)
    d = conv3x3_input_grad(d, p["conv3.weight"], pooled)
    d = unpool(d, c["r2"]) * (c["a2"] > 0)
    d = conv3x3_input_grad(d, p["conv2.weight"], c["a1"].shape) * (c["a1"] > 0)
    ds = conv3x3_input_grad(d, p["conv1.weight"], x.shape)
    # Standardisation s = (x - mean) / max(std, 1/sqrt(n)); its Jacobian is symmetric.
    bsz, n = x.shape[0], x[0].size
    flat, sflat, dflat = x.reshape(bsz, -1), c["s"].reshape(bsz, -1), ds.reshape(bsz, -1)
    std = flat.std(1, keepdims=True)
    denom = np.maximum(std, 1.0 / math.sqrt(n))
    active = (std > 1.0 / math.sqrt(n)).astype(np.float64)
    dx = (dflat - dflat.mean(1, keepdims=True) - sflat * (dflat * sflat).mean(1, keepdims=True) * active) / denom
    return dx.reshape(x.shape)


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def torch_forward(p, x, y=None):
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
        logits = net(torch.from_numpy(x.copy())).numpy()
    grad = None
    if y is not None:
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        ll = F.log_softmax(net(xt), dim=1).gather(1, torch.from_numpy(y.astype(np.int64)).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(ll, xt)
        grad = grad.numpy().astype(np.float64)
    return logits, grad, torch.__version__


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
    # Input gradients (relative L2 error over the batch: f32 against f64 rounding is ~1e-6; a gradient sent to
    # the wrong or to every tied maximum of a pooling window shows as 1e-2 and more on digits).
    y = fx["y"].astype(np.int64) if "y" in fx else None
    grads = {k: v.astype(np.float64) for k, v in fx.items() if k.startswith("grad")}
    if y is not None and grads:
        ref_grad = numpy_input_grad(params, x, y)
        for k, g in sorted(grads.items()):
            err = relative_error(g, ref_grad)
            report[f"numpy_{k}_rel_error"] = err
            ok = ok and err < 1e-3
    try:
        import torch  # noqa: F401
    except ImportError:
        report["torch"] = "not installed"
    else:
        t, t_grad, version = torch_forward(
            {k: v.astype(np.float32) for k, v in load_file(ckpt).items()}, x.astype(np.float32), y
        )
        report["torch"] = version
        report["torch_max_abs_diff"] = float(np.abs(t - ours).max())
        report["torch_same_predictions"] = bool((t.argmax(1) == ours.argmax(1)).all())
        ok = ok and report["torch_same_predictions"] and report["torch_max_abs_diff"] < 1e-3
        if t_grad is not None:
            for k, g in sorted(grads.items()):
                err = relative_error(g, t_grad)
                report[f"torch_{k}_rel_error"] = err
                ok = ok and err < 1e-3
    report["ok"] = bool(ok)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
