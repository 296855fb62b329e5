"""The benchmark table: every op at the SPEC §12 shapes, eager vs torch.compile vs dgmfast.

    python -m benchmarks.run [--ops affine_coupling,...] [--quick] [--device cpu|cuda] [--out DIR]

Prints one table and writes benchmarks/results/<device>-<date>.{json,md,png}.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import warnings

import torch

import dgmfast
from benchmarks.harness import all_cases, copy_bandwidth_gbps, dgmfast_backends, run_case

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def header(device):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(RESULTS)).stdout.strip() or None
    return dict(device=device.type, device_name=_device_name(device), torch=torch.__version__, triton=triton_version,
                dgmfast=dgmfast.__version__, extension=dgmfast.build_info(), commit=commit,
                threads=torch.get_num_threads(), date=datetime.date.today().isoformat(),
                copy_gbps=copy_bandwidth_gbps(device))


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _mib(v):
    return "-" if v is None else f"{v / 2**20:.1f}"


def markdown(head, rows):
    backends = sorted({b for r in rows for b in r["backends"]})
    lines = [f"# dgmfast benchmarks: {head['device_name']} ({head['device']})", "",
             f"torch {head['torch']}, triton {head['triton']}, dgmfast {head['dgmfast']} @ {head['commit']}, "
             f"{head['threads']} threads, {head['date']}. Copy ceiling: {head['copy_gbps']:.1f} GB/s. "
             f"glibc large-block trimming {'off' if head.get('cpu_allocator_tuned') else 'on'} for every "
             "implementation (dgmfast.tune_cpu_allocator). "
             "Times are medians in ms (on CPUs of blocks timed interleaved across implementations, "
             "benchmarks/harness.py time_steps_ms); speedups are of the fastest dgmfast backend; GB/s counts "
             "the bytes a fused kernel must move; % copy is that over the copy ceiling (a 256 MiB copy on a CPU, "
             "1 GiB on a GPU: above 100 where an op's data fit in cache); saved = bytes autograd keeps for "
             "backward.", "",
             "| op | shape | dtype | mode | eager | compile | " + " | ".join(backends)
             + " | x eager | x compile | GB/s | % copy | saved eager MiB | saved dgmfast MiB |",
             "|" + "---|" * (12 + len(backends))]
    for r in rows:
        frac = r.get("gbps") and 100 * r["gbps"] / head["copy_gbps"]
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['mode']} | {_fmt(r['eager_ms'])} | "
                     f"{_fmt(r['compile_ms'])} | " + " | ".join(_fmt(r['backends'].get(b)) for b in backends)
                     + f" | {_fmt(r.get('speedup_vs_eager'), '.2f')} | {_fmt(r.get('speedup_vs_compile'), '.2f')} | "
                     f"{_fmt(r.get('gbps'), '.1f')} | {_fmt(frac, '.0f')} | {_mib(r.get('saved_eager'))} | "
                     f"{_mib(r.get('saved_dgmfast'))} |")
    skipped = [r for r in rows if r.get("eager_skipped")]
    if skipped:
        lines += ["", "Eager reference not run:"]
        lines += [f"- {r['op']} {r['shape']} {r['dtype']} {r['mode']}: {r['eager_skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r.get("speedup_vs_eager")]
    labels = [f"{r['op']} {r['shape']} {r['dtype']} {r['mode']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["speedup_vs_eager"] for r in rows], 0.4, label="vs eager")
    ax.barh([y - 0.2 for y in ys], [r.get("speedup_vs_compile") or 0 for r in rows], 0.4, label="vs torch.compile")
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("dgmfast speed-up (log scale)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="comma-separated op names (default: all)")
    p.add_argument("--quick", action="store_true", help="first shape of each op, shorter timing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    p.add_argument("--out", default=RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--tag", default="", help="suffix for the result file names")
    args = p.parse_args(argv)
    from tqdm import tqdm

    device = torch.device(args.device)
    allocator_tuned = dgmfast.tune_cpu_allocator()
    ops = set(args.ops.split(",")) if args.ops else None
    head = header(device)
    head["cpu_allocator_tuned"] = allocator_tuned
    jobs = [(c, dt) for c in all_cases(device, args.quick, ops)
            for dt in (c.gpu_dtypes if device.type == "cuda" else c.dtypes)]
    print(f"{len(jobs)} cases on {head['device_name']}; dgmfast backends: {dgmfast_backends(device)}; "
          f"copy ceiling {head['copy_gbps']:.1f} GB/s", file=sys.stderr)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, dtype in tqdm(jobs, desc="benchmarks", file=sys.stderr):
            rows.append(run_case(case, device, dtype, quick=args.quick, compile_reference=not args.no_compile))
    md = markdown(head, rows)
    print(md)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{device.type}-{head['date']}{('-' + args.tag) if args.tag else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(header=head, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md)
    plot(rows, stem + ".png", f"dgmfast on {head['device_name']}")
    print(f"wrote {stem}.json, {stem}.md, {stem}.png")


if __name__ == "__main__":
    main()
