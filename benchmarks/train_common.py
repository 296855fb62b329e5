"""Shared pieces of the end-to-end training comparisons (train_flow.py, train_vae.py).

The same model is trained twice from the same seed, the two runs taking their steps in turn: once with every
dgmfast op on the plain-PyTorch reference (`use_backend("torch")`) and once on the fastest dgmfast backend of the
device. We record the loss per step, the median step time and the memory autograd keeps for backward (the
activation memory that dominates a training step's peak; on CUDA also the allocator's peak per step).
"""
import json
import os
import statistics
import time

import torch

import dgmfast
from benchmarks.harness import dgmfast_backends

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def fused_backend(device):
    names = dgmfast_backends(device)
    return names[0] if names else "torch"


def saved_bytes_of(fn):
    """Runs fn() and returns (its result, bytes of distinct storages saved for backward meanwhile)."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def fused_op_ms(prof, steps):
    """CPU ms per step spent inside dgmfast's ops in a torch.profiler profile of `steps` steps: the outermost
    events that are dgmfast autograd Functions (``<op>_function`` and its ``Backward`` node) or ``dgmfast_C``
    kernel calls (no-grad calls, and the forward and backward kernels of the ops with a C++ graph node, whose node
    bookkeeping is left out; the reference backend's calls do not have these names)."""
    def fused(e):
        return e.name.startswith("dgmfast_C::") or e.name.endswith(("_function", "_functionBackward"))

    def outermost(e):
        p = e.cpu_parent
        while p is not None and not fused(p):
            p = p.cpu_parent
        return p is None

    return sum(e.cpu_time_total for e in prof.events() if fused(e) and outermost(e)) / 1e3 / steps


class _Run:
    """One model training on one backend, a step at a time (train_runs interleaves several)."""

    def __init__(self, build, loss_fn, *, lr, backend, seed, device, dtype, init):
        self.backend, self.loss_fn, self.device, self.dtype = backend, loss_fn, device, dtype
        torch.manual_seed(seed)
        with dgmfast.use_backend(backend):
            self.model = build().to(device=device, dtype=dtype)
            if init is not None:
                with torch.no_grad():
                    init(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.rng = self._rng_state()
        self.losses, self.times, self.saved, self.cuda_peak = [], [], None, None

    def _rng_state(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)

    def step(self, batch):
        """One optimizer step on batch with this run's backend and random state; records loss and time."""
        torch.set_rng_state(self.rng[0])
        if self.rng[1] is not None:
            torch.cuda.set_rng_state(self.rng[1], self.device)
        cuda = self.device.type == "cuda"
        with dgmfast.use_backend(self.backend):
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            if self.saved is None:
                loss, self.saved = saved_bytes_of(lambda: self.loss_fn(self.model, batch))
            else:
                loss = self.loss_fn(self.model, batch)
            loss.backward()
            self.opt.step()
            if cuda:
                torch.cuda.synchronize()
                self.cuda_peak = max(self.cuda_peak or 0, torch.cuda.max_memory_allocated() - before)
            self.times.append((time.perf_counter() - t0) * 1e3)
        self.losses.append(loss.item())
        self.rng = self._rng_state()


def train_runs(build, loss_fn, batches, *, steps, lr, backends, seed, device, dtype=torch.float32, init=None,
               profile_steps=0, progress=None):
    """Trains build() in `dtype` for `steps` Adam steps on batches(step), once per backend in `backends` (every
    dgmfast op on that backend), the runs taking their steps in turn.

    Step s of every run comes before step s + 1 of any, and the runs alternate which goes first, so a slow phase
    of a shared machine falls on all of them alike (as the op table's timing, benchmarks/harness.py). Each run
    keeps its own random state (torch's generators, restored around its steps), so it draws the noise it would
    draw alone. loss_fn(model, batch) -> scalar loss. init(model), if given, runs once under no_grad after the
    model is moved to `device` and `dtype` (e.g. a data-dependent initialization on its own batch). On a CPU,
    each run's last `profile_steps` steps run under torch.profiler, one run after the other and left out of the
    step time, to measure the time spent inside dgmfast's ops (`fused_op_ms`). Returns per run: losses per step,
    the median step time (ms), saved-for-backward bytes of one step and, on CUDA, the largest rise of the
    allocator's peak over the memory held before a step (activations, gradients, temporaries).
    """
    runs = [_Run(build, loss_fn, lr=lr, backend=b, seed=seed, device=device, dtype=dtype, init=init)
            for b in backends]
    profiled = profile_steps if device.type == "cpu" else 0

    def batch_of(step):
        batch = batches(step)
        return batch.to(dtype) if batch.is_floating_point() else batch

    for step in range(steps - profiled):
        batch = batch_of(step)
        for run in (runs if step % 2 == 0 else runs[::-1]):
            run.step(batch)
            if progress is not None:
                progress.update(1)
    profiles = [None] * len(runs)
    for i, run in enumerate(runs if profiled else ()):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for step in range(steps - profiled, steps):
                run.step(batch_of(step))
                if progress is not None:
                    progress.update(1)
        profiles[i] = fused_op_ms(prof, profiled)
    return [dict(backend=r.backend, model=r.model, losses=r.losses,
                 step_ms=statistics.median(r.times[1:steps - profiled] or r.times), saved_bytes=r.saved,
                 cuda_peak_bytes=r.cuda_peak, fused_op_ms=p) for r, p in zip(runs, profiles)]


def train_run(build, loss_fn, batches, *, backend, **kwargs):
    """train_runs of one backend: its result."""
    return train_runs(build, loss_fn, batches, backends=(backend,), **kwargs)[0]


def max_rel_diff(a, b, steps=100):
    """Largest |a - b| / |a| over the first `steps` entries of two loss curves."""
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a[:steps], b[:steps])]
    return max(rel) if rel else None


def agreement(build, loss_fn, batches, *, steps, lr, fused, seed, device, init=None, progress=None):
    """Max relative loss difference, reference vs `fused`, over the first 100 of `steps` steps trained
    in float64. In float32 the two curves can drift apart by more than the kernels' rounding: Adam's first
    steps move every parameter by about lr * sign(gradient), so a parameter whose gradient is ~0 moves by
    +-lr on the sign of its rounding error, and the difference then grows with the training dynamics (the
    flow scripts avoid the worst case, see train_flow.init_actnorms). Float64 leaves the math as the only
    difference."""
    runs = train_runs(build, loss_fn, batches, steps=min(steps, 100), lr=lr, backends=("torch", fused), seed=seed,
                      device=device, dtype=torch.float64, init=init, progress=progress)
    return max_rel_diff(runs[0]["losses"], runs[1]["losses"])


def compare(runs):
    """Summary of a reference run vs a fused run of the same model and seed."""
    ref, fused = runs
    out = dict(step_ms_reference=ref["step_ms"], step_ms_dgmfast=fused["step_ms"],
               speedup=ref["step_ms"] / fused["step_ms"], saved_mib_reference=ref["saved_bytes"] / 2**20,
               saved_mib_dgmfast=fused["saved_bytes"] / 2**20,
               memory_reduction=1 - fused["saved_bytes"] / ref["saved_bytes"] if ref["saved_bytes"] else None,
               max_rel_loss_diff_first_100=max_rel_diff(ref["losses"], fused["losses"]),
               dgmfast_backend=fused["backend"], fused_op_ms=fused["fused_op_ms"])
    if fused["fused_op_ms"] is not None:
        # the speed-up if dgmfast's ops took no time at all: the rest of the step is the same in both runs
        out["speedup_ceiling"] = ref["step_ms"] / max(fused["step_ms"] - fused["fused_op_ms"], 1e-9)
    if ref["cuda_peak_bytes"] is not None:
        out.update(cuda_peak_mib_reference=ref["cuda_peak_bytes"] / 2**20,
                   cuda_peak_mib_dgmfast=fused["cuda_peak_bytes"] / 2**20)
    return out


def print_table(columns, rows):
    """Prints a markdown table: columns = [(header, format(row) -> str)], rows = [row]."""
    print("\n| " + " | ".join(h for h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row) for _, fmt in columns) + " |")


def run_columns():
    """The table columns every training comparison shares (rows are compare() summaries with a "name")."""
    return [("model", lambda s: s["name"]), ("step ms ref", lambda s: f"{s['step_ms_reference']:.1f}"),
            ("step ms dgmfast", lambda s: f"{s['step_ms_dgmfast']:.1f}"), ("speed-up", lambda s: f"{s['speedup']:.2f}"),
            ("ceiling", lambda s: f"{s['speedup_ceiling']:.2f}" if s.get("speedup_ceiling") else "-"),
            ("max rel diff float32", lambda s: f"{s['max_rel_loss_diff_first_100']:.1e}"),
            ("max rel diff float64", lambda s: f"{s['max_rel_loss_diff_float64']:.1e}")]


TABLE_NOTES = ("ceiling: the speed-up if dgmfast's ops took no time (reference step / (dgmfast step - time inside "
               "dgmfast's ops, from a profile of the last steps)); everything else in the step is the same in both "
               "runs.\nmax rel diff: largest |ref - dgmfast| / |ref| of the training loss over the first 100 steps, same "
               "seed (float32: the timed runs; float64: the same training in float64, where rounding no longer "
               "dominates)")


def plot_curves(curves, path, ylabel, title):
    """curves: {label: list of values per step}; one line each on one axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, ys) in enumerate(curves.items()):
        ax.plot(ys, label=label, lw=1.2, ls="-" if i % 2 == 0 else "--")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=lambda o: None)
