"""PyTorch reference for AutoAttack-grade evaluation, to compare with the project's own in ONE run
(`cargo xtask bench --autoattack` runs it; a copy of the team's ../shared/bench/torch_autoattack.py).

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchattacks safetensors numpy   # once
    /tmp/tv/bin/python xtask/torch_autoattack.py CKPT.safetensors MNIST_DIR [--n 1000] [--eps 32]
        [--attacks apgd-ce,apgd-t,fab-t,square] [--batch 250] [--json]

CKPT: a checkpoint with PyTorch names (conv1.weight ... fc3.bias) of the paper's MNIST or CIFAR-10 CNN; per-image
standardisation is the model's first layer, inputs in [0, 1]. MNIST_DIR: IDX files (t10k-images-idx3-ubyte[.gz],
t10k-labels-idx1-ubyte[.gz]). Runs torchattacks' APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5,000
queries) with the hyper-parameters of AutoAttack's standard version (100 iterations, 1 restart), L-inf at
eps/255, on the first N test images; each attack on the points still robust (per-point worst case). Prints, per
attack, the robust accuracy after it (cumulative) and the seconds it took; --json prints one JSON object.
"""
import argparse, gzip, json, math, os, struct, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F, torchattacks
from safetensors.torch import load_file

def idx(path):
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
        data = f.read()
    nd = struct.unpack('>I', data[:4])[0] & 0xff
    dims = struct.unpack('>' + 'I' * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)

class Net(nn.Module):
    def __init__(self, sd):
        super().__init__()
        w = lambda k: sd[k + '.weight'].shape
        c = w('conv1')[1]
        self.conv1, self.conv2 = nn.Conv2d(c, w('conv1')[0], 3), nn.Conv2d(w('conv2')[1], w('conv2')[0], 3)
        self.conv3, self.conv4 = nn.Conv2d(w('conv3')[1], w('conv3')[0], 3), nn.Conv2d(w('conv4')[1], w('conv4')[0], 3)
        self.fc1 = nn.Linear(w('fc1')[1], w('fc1')[0]); self.fc2 = nn.Linear(w('fc2')[1], w('fc2')[0])
        self.fc3 = nn.Linear(w('fc3')[1], w('fc3')[0])
        self.load_state_dict(sd)

    def forward(self, x):
        n = x[0].numel()
        x = (x - x.flatten(1).mean(1).view(-1, 1, 1, 1)) / x.flatten(1).std(1, unbiased=False).clamp_min(1 / math.sqrt(n)).view(-1, 1, 1, 1)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('ckpt'); ap.add_argument('data')
    ap.add_argument('--n', type=int, default=1000); ap.add_argument('--eps', type=float, default=32)
    ap.add_argument('--attacks', default='apgd-ce,apgd-t,fab-t,square'); ap.add_argument('--batch', type=int, default=250)
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--json', action='store_true')
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count()); torch.manual_seed(a.seed)
    find = lambda s: next(p for p in (os.path.join(a.data, s), os.path.join(a.data, s + '.gz')) if os.path.exists(p))
    x = torch.tensor(idx(find('t10k-images-idx3-ubyte')), dtype=torch.float32).div(255).unsqueeze(1)[:a.n]
    y = torch.tensor(idx(find('t10k-labels-idx1-ubyte')).astype(np.int64))[:a.n]
    m = Net(load_file(a.ckpt)).eval(); eps = a.eps / 255
    make = {
        'apgd-ce': lambda: torchattacks.APGD(m, norm='Linf', eps=eps, steps=100, n_restarts=1, loss='ce', seed=a.seed),
        'apgd-t': lambda: torchattacks.APGDT(m, norm='Linf', eps=eps, steps=100, n_restarts=1, n_classes=10, seed=a.seed),
        'fab-t': lambda: torchattacks.FAB(m, norm='Linf', eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                          n_classes=10, seed=a.seed),
        'square': lambda: torchattacks.Square(m, norm='Linf', eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                                              loss='margin', resc_schedule=False, seed=a.seed),
    }
    with torch.no_grad():
        robust = torch.cat([m(x[i:i + a.batch]).argmax(1) == y[i:i + a.batch] for i in range(0, a.n, a.batch)])
    out = {'n': a.n, 'eps_255': a.eps, 'clean': robust.float().mean().item(), 'torchattacks': torchattacks.__version__}
    for name in a.attacks.split(','):
        atk, t0 = make[name](), time.time()
        idx_r = robust.nonzero().squeeze(1)
        for i in range(0, len(idx_r), a.batch):
            j = idx_r[i:i + a.batch]
            xa = atk(x[j], y[j])
            with torch.no_grad():
                robust[j] = m(xa).argmax(1) == y[j]
        out[name] = robust.float().mean().item(); out[name + '_seconds'] = round(time.time() - t0, 2)
        if not a.json:
            print(f'{name:8s} robust accuracy {out[name]:.4f}  ({out[name + "_seconds"]:.1f} s)', flush=True)
    out['robust'] = robust.float().mean().item()
    print(json.dumps(out) if a.json else f'AutoAttack (standard) robust accuracy {out["robust"]:.4f} on {a.n} images, clean {out["clean"]:.4f}')

if __name__ == '__main__':
    main()
