#!/usr/bin/env python3
"""Table 3 (mean ± SD over seeds, beside the paper) and the per-run budget of docs/results/mnist.md, from the
model zoo's committed evaluations (zoo/mnist/<run>/run.json, eval/whitebox.json, autoattack/autoattack.json) and, for
clean-s0, whose AutoAttack ran inside the report, runs/reproduce-mnist50/eval/autoattack.json.

    python3 docs/results/tools/mnist_tables.py           # print both tables
    python3 docs/results/tools/mnist_tables.py --write   # replace them in docs/results/mnist.md

Standard library only. A run not yet in the zoo shows as pending.
"""
import json, os, statistics as st, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
Z = os.path.join(ROOT, 'zoo', 'mnist')
DOC = os.path.join(ROOT, 'docs', 'results', 'mnist.md')
# AutoAttack rows that the reproduce report computed with its white-box table (runs whose zoo folder has no
# autoattack/), by run name.
REPORT_AA = json.load(open(os.path.join(ROOT, 'runs', 'reproduce-mnist50', 'eval', 'autoattack.json')))['models']
# What a run's epoch times cannot say about themselves.
NOTES = {'clean-s0': ' (one epoch spanned a suspended session)'}

groups = [
 ('clean', ['clean-s0','clean-s1','clean-s2'], ('CLEAN', [99.4,99.4,98.0,89.1,44.8,None,0.159])),
 ('wdecay 2·10⁻⁴', ['wdecay-s0'], ('WDECAY 2e-4', [99.4,99.3,99.4,88.2,59.8,None,0.209])),
 ('pgd (**10 epochs**)', ['pgd-s0'], ('PGD (50 epochs)', [99.5,99.5,99.5,98.8,98.3,None,0.423])),
 ('fgsm', ['fgsm-s0'], ('FGSM', [99.4,99.4,99.2,98.5,96.9,None,0.325])),
 ('gn λ 10', ['gn-l10-s0','gn-l10-s1','gn-l10-s2'], ('GN λ 5', [99.4,99.3,99.3,94.2,90.0,None,0.307])),
 ('sgr-grad λ 0.05', ['sgr-grad-l0.05-s0','sgr-grad-l0.05-s1'], ('SGR_GRAD λ 0.1', [99.5,99.5,99.5,94.3,88.5,None,0.294])),
 ('sgr-sign λ 0.5 (protocol)', ['sgr-sign-l0.5-s0','sgr-sign-l0.5-s1','sgr-sign-l0.5-s2'], ('SGR_SIGN λ 1', [99.5,99.5,99.5,94.9,89.5,None,0.301])),
 ('sgr-sign λ 1 (paper\'s λ)', ['sgr-sign-l1-s0','sgr-sign-l1-s1'], None),
 ('sgr-sign λ 0.25 (5-epoch sweep)', ['sgr-sign-l0.25-s0','sgr-sign-l0.25-s1'], None),
 ('fgsm-sgr λ 0.25', ['fgsm-sgr-l0.25-s0'], ('FGSM_SGR λ 0.5', [99.5,99.5,99.5,94.0,83.2,None,0.284])),
 ('pgd-sgr λ 0.5 (**10 epochs**)', ['pgd-sgr-l0.5-s0'], ('PGD_SGR λ 1 (50 epochs)', [99.6,99.5,99.5,94.4,84.3,None,0.294])),
 ('lrc ζ 8, ε 0.3 (not in Table 3)', ['lrc-s0'], None),
]
def load(run):
    w = os.path.join(Z, run, 'eval/whitebox.json'); a = os.path.join(Z, run, 'autoattack/autoattack.json')
    if not os.path.exists(w): return None
    r = json.load(open(w))[0]
    aa = json.load(open(a))[0]['robust'] if os.path.exists(a) else r.get('aa')
    return [100*r['test'],100*r['rand'],100*r['fgm'],100*r['fgsm'],100*r['pgd'], None if aa is None else 100*aa, r['fool_rho']]
def cell(vals, k):
    vals = [v for v in vals if v is not None]
    if not vals: return '–'
    f = '%.3f' if k == 6 else '%.1f'
    if len(vals) == 1: return f % vals[0]
    f2 = '%.3f ± %.3f' if k == 6 else ('%.2f ± %.2f' if k < 3 else '%.1f ± %.1f')
    return f2 % (st.mean(vals), st.stdev(vals))


def table3():
    out = []
    out.append('| method (ours / paper) | seeds | TEST | RAND | FGM | FGSM | PGD-10 | AA (1,000) | FOOL ρ |')
    out.append('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for name, runs, paper in groups:
        rows = [load(r) for r in runs]; rows = [r for r in rows if r]
        pend = len(runs) - len(rows)
        seeds = str(len(rows)) + (f' (+{pend} pending)' if pend else '')
        if rows:
            out.append(f'| {name} | {seeds} | ' + ' | '.join(cell([r[k] for r in rows], k) for k in range(7)) + ' |')
        else:
            out.append(f'| {name} | pending | ' + ' | '.join(['…']*7) + ' |')
        if paper:
            p = paper[1]
            out.append(f'| *paper: {paper[0]}* | | ' + ' | '.join('–' if v is None else (('%.3f' if k==6 else '%.1f') % v) for k, v in enumerate(p)) + ' |')
    return '\n'.join(out) + '\n'


def budget():
    out = []
    order = ['clean-s0','clean-s1','clean-s2','wdecay-s0','gn-l10-s0','gn-l10-s1','gn-l10-s2','sgr-sign-l0.5-s0','sgr-sign-l0.5-s1','sgr-sign-l0.5-s2','sgr-sign-l1-s0','sgr-sign-l1-s1','sgr-sign-l0.25-s0','sgr-sign-l0.25-s1','sgr-grad-l0.05-s0','sgr-grad-l0.05-s1','fgsm-s0','fgsm-sgr-l0.25-s0','pgd-s0','pgd-sgr-l0.5-s0','lrc-s0','fgsm-eps64-s0','pgd-eps64-s0']
    out.append('| run | epochs | training | s per epoch (min / median / max) | AutoAttack (1,000 images) |')
    out.append('|---|---:|---:|---|---:|')
    tot=0; aat=0
    for r in order:
        p = os.path.join(Z, r, 'run.json')
        if not os.path.exists(p):
            out.append(f'| {r} | pending | | | |'); continue
        d = json.load(open(p)); s = [h['seconds'] for h in d['history']]
        tot += sum(s)
        a = os.path.join(Z, r, 'autoattack/autoattack.json')
        if os.path.exists(a):
            sec = sum(x[1] for x in json.load(open(a))[0]['seconds']); aat += sec
            aas = f'{sec/60:.0f} min'
        elif r in REPORT_AA:
            sec = REPORT_AA[r]['seconds']; aat += sec
            aas = f'{sec/60:.0f} min'
        else: aas = 'pending'
        # A run started on a GPU (the record keeps the device it started on) and continued on the CPU.
        gpu = ' (started on CUDA, continued on the CPU)' if d.get('device') == 'cuda' else ''
        out.append(f"| {r} | {d['epochs_done']} | {sum(s)/3600:.1f} h | {min(s):.0f} / {st.median(s):.0f} / {max(s):.0f}{gpu}{NOTES.get(r, '')} | {aas} |")
    out.append(f'| total | | {tot/3600:.1f} h | | {aat/3600:.1f} h |')
    return '\n'.join(out) + '\n'


def replace_block(text, start, new):
    """Replaces the Markdown table whose first line starts with `start`."""
    lines = text.split('\n')
    i = next(k for k, l in enumerate(lines) if l.startswith(start))
    j = i
    while j < len(lines) and lines[j].startswith('|'):
        j += 1
    return '\n'.join(lines[:i] + new.rstrip('\n').split('\n') + lines[j:])


if __name__ == '__main__':
    t, b = table3(), budget()
    if '--write' in sys.argv[1:]:
        s = open(DOC).read()
        s = replace_block(s, '| method (ours / paper) |', t)
        s = replace_block(s, '| run | epochs | training |', b)
        open(DOC, 'w').write(s)
    else:
        print(t)
        print(b)
