"""Independent check that an sgr checkpoint means the same network to PyTorch users.

    python3 tests/pytorch_compat.py CHECKPOINT.safetensors FIXTURE.safetensors

FIXTURE holds `x` (B, C, H, W) images in [0, 1] and `logits` (B, K) computed by sgr, and optionally labels `y`
with sgr's input gradients `grad*` of log softmax(f(x))[y] (one key per code path). This script rebuilds the
network from the spec string the checkpoint records in its metadata (parsed here independently; the paper's CNN
for files without one) from the checkpoint's tensors by *name* with PyTorch's conventions (Conv2d weights [out, in, kh, kw]
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

def parse_spec(spec, classes):
    """The layer list of an sgr spec string (independently of the Rust parser): conv<C>[-k<K>][-same|-p<P>]
    [-linear], pool, relu, flatten (implied before the first fc), fc<N>[-linear]; the output fc implied."""
    layers = []
    for tok in [t.strip().lower() for t in spec.split(",") if t.strip()]:
        head, *mods = tok.split("-")
        if head.startswith("conv"):
            k, pad, relu = 3, 0, True
            for m in mods:
                if m == "same":
                    pad = None
                elif m == "linear":
                    relu = False
                elif m.startswith("k"):
                    k = int(m[1:])
                elif m.startswith("p"):
                    pad = int(m[1:])
            layers.append(dict(kind="conv", out=int(head[4:]), k=k, pad=(k - 1) // 2 if pad is None else pad, relu=relu))
        elif head.startswith("fc"):
            layers.append(dict(kind="fc", out=int(head[2:]), relu="linear" not in mods))
        else:
            layers.append(dict(kind=head))
    if not any(l["kind"] == "flatten" for l in layers):
        first_fc = next((i for i, l in enumerate(layers) if l["kind"] == "fc"), len(layers))
        layers.insert(first_fc, dict(kind="flatten"))
    layers.append(dict(kind="fc", out=classes, relu=False))
    conv_i = fc_i = 0
    for l in layers:  # PyTorch names, numbered in order
        if l["kind"] == "conv":
            conv_i += 1
            l["name"] = f"conv{conv_i}"
        elif l["kind"] == "fc":
            fc_i += 1
            l["name"] = f"fc{fc_i}"
    return layers


def network_spec(ckpt, params):
    """The spec a checkpoint records in its metadata, or the paper's CNN for files without it."""
    from safetensors import safe_open

    with safe_open(ckpt, framework="numpy") as f:
        meta = f.metadata() or {}
    if "sgr" in meta:
        info = json.loads(meta["sgr"])
        if "layers" in info.get("config", {}):
            return info["arch"]
    convs = [params[f"conv{i}.weight"].shape[0] for i in range(1, 5)]
    fcs = [params[f"fc{i}.weight"].shape[0] for i in range(1, 3)]
    return f"conv{convs[0]},conv{convs[1]},pool,conv{convs[2]},conv{convs[3]},pool,fc{fcs[0]},fc{fcs[1]}"


def standardize(x):
    b = x.shape[0]
    n = x[0].size
    flat = x.reshape(b, -1)
    mean = flat.mean(1, keepdims=True)
    std = flat.std(1, keepdims=True)  # population std
    return ((flat - mean) / np.maximum(std, 1.0 / math.sqrt(n))).reshape(x.shape)


def conv(x, w, b, pad):
    k = w.shape[2]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # B, C, H', W', k, k
    return np.einsum("bchwij,ocij->bohw", win, w, optimize=True) + b[None, :, None, None]


def pool(x):
    bsz, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(bsz, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def numpy_forward(p, layers, x):
    return numpy_forward_cache(p, layers, x)[0]


def numpy_forward_cache(p, layers, x):
    """Logits, and each layer's input and pre-activation (for the backward pass)."""
    s = standardize(x)
    a, cache = s, []
    for l in layers:
        inp = a
        if l["kind"] == "conv":
            pre = conv(a, p[l["name"] + ".weight"], p[l["name"] + ".bias"], l["pad"])
            a = np.maximum(pre, 0) if l["relu"] else pre
        elif l["kind"] == "fc":
            pre = a @ p[l["name"] + ".weight"].T + p[l["name"] + ".bias"]
            a = np.maximum(pre, 0) if l["relu"] else pre
        elif l["kind"] == "relu":
            pre = a
            a = np.maximum(a, 0)
        elif l["kind"] == "pool":
            pre = a
            a = pool(a)
        elif l["kind"] == "flatten":
            pre = a
            a = a.reshape(a.shape[0], -1)
        else:
            raise ValueError(f"unknown layer {l}")
        cache.append((inp, pre))
    return a, dict(s=s, layers=cache)


def conv_input_grad(dy, w, shape, pad):
    """The adjoint of conv in its input: dx[b, c, i+di, j+dj] += sum_o dy[b, o, i, j] w[o, c, di, dj]."""
    k = w.shape[2]
    padded = (shape[0], shape[1], shape[2] + 2 * pad, shape[3] + 2 * pad)
    dx = np.zeros(padded)
    oh, ow = dy.shape[2], dy.shape[3]
    for di in range(k):
        for dj in range(k):
            dx[:, :, di : di + oh, dj : dj + ow] += np.einsum("bohw,oc->bchw", dy, w[:, :, di, dj], optimize=True)
    return dx[:, :, pad : pad + shape[2], pad : pad + shape[3]]


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


def numpy_input_grad(p, layers, x, y):
    """grad_x log softmax(f(x))[y], by a hand-written backward pass (ReLU' = [pre > 0], as PyTorch)."""
    z, c = numpy_forward_cache(p, layers, x)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    d = -prob
    d[np.arange(len(y)), y] += 1.0
    for l, (inp, pre) in zip(reversed(layers), reversed(c["layers"])):
        if l["kind"] in ("conv", "fc") and l["relu"] or l["kind"] == "relu":
            d = d * (pre > 0)
        if l["kind"] == "conv":
            d = conv_input_grad(d, p[l["name"] + ".weight"], inp.shape, l["pad"])
        elif l["kind"] == "fc":
            d = d @ p[l["name"] + ".weight"]
        elif l["kind"] == "pool":
            d = unpool(d, inp)
        elif l["kind"] == "flatten":
            d = d.reshape(inp.shape)
    ds = d
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


def torch_forward(p, layers, x, y=None):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for l in layers:
                w = p.get(l.get("name", "") + ".weight")
                if l["kind"] == "conv":
                    setattr(self, l["name"], nn.Conv2d(w.shape[1], l["out"], l["k"], padding=l["pad"]))
                elif l["kind"] == "fc":
                    setattr(self, l["name"], nn.Linear(w.shape[1], l["out"]))

        def forward(self, x):
            n = x[0].numel()
            std = x.flatten(1).std(1, unbiased=False).clamp_min(1 / math.sqrt(n))
            x = (x - x.flatten(1).mean(1).view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
            for l in layers:
                if l["kind"] in ("conv", "fc"):
                    x = getattr(self, l["name"])(x)
                    if l["relu"]:
                        x = F.relu(x)
                elif l["kind"] == "relu":
                    x = F.relu(x)
                elif l["kind"] == "pool":
                    x = F.max_pool2d(x, 2)
                elif l["kind"] == "flatten":
                    x = x.flatten(1)
            return x

    net = Net()
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
    fx = load_file(fixture)
    x, ours = fx["x"].astype(np.float64), fx["logits"].astype(np.float64)
    spec = network_spec(ckpt, params)
    layers = parse_spec(spec, ours.shape[1])
    names = [f"{l['name']}.{w}" for l in layers if "name" in l for w in ("weight", "bias")]
    missing = [n for n in names if n not in params]
    extra = [n for n in params if n not in names]
    if missing or extra:
        print(json.dumps({"ok": False, "spec": spec, "missing": missing, "unexpected": extra}))
        sys.exit(1)
    ref = numpy_forward(params, layers, x)
    report = {
        "spec": spec,
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
        ref_grad = numpy_input_grad(params, layers, x, y)
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
            {k: v.astype(np.float32) for k, v in load_file(ckpt).items()}, layers, x.astype(np.float32), y
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
