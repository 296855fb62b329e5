"""End-to-end flow training: the same model and seed with reference ops and with dgmfast ops.

    python -m benchmarks.train_flow [--model glow|flowpp|both] [--dequant uniform|variational|both]
                                    [--steps 100] [--batch 64] [--quick] [--out DIR]

Data: scikit-learn's 8x8 digits (1,797 images shipped inside the package, 17 grey levels, so 5-bit pixels);
1,500 train, 297 held out. Each model is trained twice from one seed, once with every dgmfast op on the
plain-PyTorch reference (use_backend("torch")) and once on the device's fastest dgmfast backend; we report
the median step time, the memory autograd keeps for backward, both loss curves (bits/dim) on one plot, and
held-out bits/dim. As in the original Glow code (its init batch), the ActNorm layers are initialized from a
separate batch (512 training images) before the first step. With --dequant both, the Flow++-style model is
trained with uniform and with variational dequantization to measure the seed's claim on held-out data.
"""
import argparse
import math
import os
import sys

import torch

import dgmfast
from benchmarks.train_common import (RESULTS, TABLE_NOTES, agreement, compare, fused_backend, plot_curves, print_table,
                                     run_columns, train_runs, write_json)
from dgmfast import functional as F

N_BITS = 5


def load_digits(device):
    """uint8 [N, 1, 8, 8] in [0, 17) from scikit-learn's bundled digits; fixed train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    x = torch.from_numpy(sk_digits().images).to(torch.uint8).unsqueeze(1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x = x[perm].to(device)
    return x[:1500], x[1500:]


def build(model_name, dequant):
    if model_name == "glow":
        flow = dgmfast.nn.Glow(in_channels=1, image_size=8, levels=2, steps=4, hidden=32)
        deq = dgmfast.nn.UniformDequantization(n_bits=N_BITS, mode="centered", in_bits=N_BITS)
    else:
        flow = dgmfast.nn.FlowPlusPlus(in_channels=1, image_size=8, hidden=32, num_components=8)
        deq = (dgmfast.nn.VariationalDequantization(channels=1, n_bits=N_BITS, hidden=16, context_channels=8)
               if dequant == "variational" else dgmfast.nn.UniformDequantization(n_bits=N_BITS, in_bits=N_BITS))
    return torch.nn.ModuleDict(dict(flow=flow, dequant=deq))


def bits_per_dim(model, x):
    y, log_weight = model["dequant"](x)
    return F.bits_per_dim(model["flow"].log_prob(y), log_weight, x[0].numel()).mean()


def init_actnorms(train, size=512):
    """init(model) for train_run: one forward pass on a fixed batch of `size` training images, which runs
    every ActNorm's data-dependent initialization (Glow's "init batch"). Initializing on the first training
    batch instead makes that batch's ActNorm gradients vanish up to rounding, and Adam's first step then
    moves those parameters by +-lr on the sign of the rounding error, a difference between the reference and
    the fused run that has nothing to do with the kernels' accuracy."""
    init_batch = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(1))[:size].to(train.device)]
    return lambda model: bits_per_dim(model, init_batch)


@torch.no_grad()
def heldout_bpd(model, x, repeats=4):
    """Mean held-out bits/dim bound over `repeats` dequantization draws."""
    model.eval()
    out = sum(bits_per_dim(model, x).item() for _ in range(repeats)) / repeats
    model.train()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["glow", "flowpp", "both"], default="both")
    p.add_argument("--dequant", choices=["uniform", "variational", "both"], default="variational",
                   help="dequantization of the Flow++-style model (Glow always uses uniform)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--quick", action="store_true", help="100 steps (a few minutes on 2 cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    from tqdm import tqdm

    dgmfast.tune_cpu_allocator()
    device = torch.device(args.device)
    steps = 100 if args.quick else args.steps
    train, test = load_digits(device)
    fused = fused_backend(device)
    init = init_actnorms(train)
    configs = []
    for m in (["glow", "flowpp"] if args.model == "both" else [args.model]):
        deqs = ["uniform"] if m == "glow" else (["uniform", "variational"] if args.dequant == "both" else [args.dequant])
        configs += [(m, d) for d in deqs]

    def batches(step):
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        return train[torch.randint(0, train.shape[0], (args.batch,), generator=g).to(device)]

    summary, curves = {}, {}
    os.makedirs(args.out, exist_ok=True)
    with tqdm(total=2 * (steps + min(steps, 100)) * len(configs), desc="train_flow", file=sys.stderr) as bar:
        for model_name, dequant in configs:
            runs = train_runs(lambda: build(model_name, dequant), bits_per_dim, batches, steps=steps, lr=args.lr,
                              backends=("torch", fused), seed=args.seed, device=device, init=init, profile_steps=5,
                              progress=bar)
            name = f"{model_name}-{dequant}"
            summary[name] = compare(runs)
            summary[name]["max_rel_loss_diff_float64"] = agreement(
                lambda: build(model_name, dequant), bits_per_dim, batches, steps=steps, lr=args.lr, fused=fused,
                seed=args.seed, device=device, init=init, progress=bar)
            torch.manual_seed(args.seed + 1)
            with dgmfast.use_backend(fused):
                summary[name]["heldout_bpd"] = heldout_bpd(runs[1]["model"], test)
            summary[name]["final_train_bpd"] = sum(runs[1]["losses"][-10:]) / 10
            for r in runs:
                curves[f"{name} ({'reference' if r['backend'] == 'torch' else 'dgmfast ' + r['backend']})"] = r["losses"]
    plot_path = os.path.join(args.out, f"train_flow-{device.type}.png")
    plot_curves(curves, plot_path, "bits/dim (train batch)", "Flow training: reference vs dgmfast, same seed")
    write_json(dict(args=vars(args), summary=summary, curves=curves), os.path.join(args.out, f"train_flow-{device.type}.json"))
    columns = run_columns()
    columns[5:5] = [("saved MiB ref", lambda s: f"{s['saved_mib_reference']:.1f}"),
                    ("saved MiB dgmfast", lambda s: f"{s['saved_mib_dgmfast']:.1f}"),
                    ("memory -%", lambda s: f"{100 * s['memory_reduction']:.0f}")]
    columns.append(("held-out bpd", lambda s: f"{s['heldout_bpd']:.3f}"))
    print_table(columns, [dict(s, name=name) for name, s in summary.items()])
    print(TABLE_NOTES)
    print(f"plot: {plot_path}")
    return summary


if __name__ == "__main__":
    main()
