"""End-to-end VAE training on procedural dSprites: reference ops vs dgmfast ops, same model and seed.

    python -m benchmarks.train_vae [--model beta|dip|both] [--steps 300] [--batch 128] [--quick]
                                   [--sweep] [--metrics] [--out DIR]

A conv VAE (Burgess et al. layout, 10 latents) trained with beta-VAE or DIP-VAE-I. Every step also
computes the ELBO-surgery decomposition of the batch (MWS estimator: MI, marginal KL, TC), logged with
the loss, so the step exercises reparameterize + KL, the DIP penalty and the mixture kernel. Each model
is trained twice from one seed (ops on the reference, then on the fastest dgmfast backend): step time,
saved-for-backward memory and both loss curves. With --metrics the six disentanglement metrics run on
the trained dgmfast model; --sweep trains beta in {1, 4, 8} and DIP lambda_od in {1, 10} (dgmfast only)
and reports reconstruction, KL, ELBO-surgery terms and metrics per setting.
"""
import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

import dgmfast
import dgmfast.data
from benchmarks.train_common import (RESULTS, TABLE_NOTES, agreement, compare, fused_backend, plot_curves, print_table,
                                     run_columns, train_run, train_runs, write_json)
from dgmfast.backends import forced_backend
from dgmfast import functional as F

LATENTS = 10
DSPRITES_SIZE = 737_280


class ConvVAE(nn.Module):
    def __init__(self, latents=LATENTS):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 4, 2, 1)  # noqa: E731
        deconv = lambda i, o: nn.ConvTranspose2d(i, o, 4, 2, 1)  # noqa: E731
        self.encoder = nn.Sequential(conv(1, 32), nn.ReLU(), conv(32, 32), nn.ReLU(), conv(32, 64), nn.ReLU(),
                                     conv(64, 64), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(),
                                     nn.Linear(128, 2 * latents))
        self.decoder = nn.Sequential(nn.Linear(latents, 128), nn.ReLU(), nn.Linear(128, 1024), nn.ReLU(),
                                     nn.Unflatten(1, (64, 4, 4)), deconv(64, 64), nn.ReLU(), deconv(64, 32), nn.ReLU(),
                                     deconv(32, 32), nn.ReLU(), deconv(32, 1))

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x):
        """Representation for the metrics: the posterior mean."""
        return self.encode(x)[0]


def vae_loss(kind, beta=4.0, lambda_od=10.0, stats=None):
    """loss(model, x) for beta-VAE or DIP-VAE-I, plus the ELBO-surgery terms of the batch (into
    stats[backend], a list per backend, if stats is a dict)."""
    def loss(model, x):
        mu, logvar = model.encode(x)
        z, kl, _ = F.reparameterize(mu, logvar)
        recon = nn.functional.binary_cross_entropy_with_logits(model.decoder(z), x, reduction="none").sum((1, 2, 3))
        total = recon.mean() + (beta if kind == "beta" else 1.0) * kl.mean()
        if kind == "dip":
            total = total + F.dip_vae_penalty(mu, logvar, lambda_od=lambda_od, lambda_d=10 * lambda_od, variant="i")
        surgery = F.elbo_surgery(z, mu, logvar, dataset_size=DSPRITES_SIZE, estimator="mws")
        if stats is not None:  # per backend (runs of two backends take turns, benchmarks/train_common.py)
            stats.setdefault(forced_backend(), []).append(dict(recon=recon.mean().item(), kl=kl.mean().item(), mi=surgery.mi.item(),
                              marginal_kl=surgery.marginal_kl.item(), tc=surgery.tc.item()))
        return total
    return loss


def dsprites_batches(batch, seed, device):
    data = dgmfast.data.DSprites()

    def batches(step):
        rng = np.random.RandomState(seed * 100_003 + step)
        obs = data.sample_observations_from_factors(data.sample_factors(batch, rng), rng)
        return torch.from_numpy(np.ascontiguousarray(obs.transpose(0, 3, 1, 2))).float().to(device)
    return batches


def run_metrics(model, quick, device):
    from dgmfast.metrics import evaluate
    small = dict(num_train=2000, num_eval=1000) if quick else {}
    kwargs = {k: dict(small) for k in ("beta_vae", "factor_vae")}
    kwargs.update({k: dict(num_train=2000, num_test=1000) if quick else {} for k in ("dci", "modularity", "sap")})
    kwargs["mig"] = dict(num_train=2000) if quick else {}
    if quick:
        kwargs["factor_vae"]["num_variance_estimate"] = 2000
    model.eval()
    with dgmfast.use_backend(fused_backend(device)):
        results, line = evaluate(model, dgmfast.data.DSprites(), seed=0, metric_kwargs=kwargs, progress=False)
    model.train()
    return results, line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["beta", "dip", "both"], default="both")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--quick", action="store_true", help="100 steps, small metric samples")
    p.add_argument("--metrics", action="store_true", help="run the six metrics on the trained models")
    p.add_argument("--sweep", action="store_true", help="beta in {1,4,8}, DIP lambda_od in {1,10} (dgmfast only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    from tqdm import tqdm

    dgmfast.tune_cpu_allocator()
    device = torch.device(args.device)
    steps = 100 if args.quick else args.steps
    fused = fused_backend(device)
    batches = dsprites_batches(args.batch, args.seed, device)
    kinds = ["beta", "dip"] if args.model == "both" else [args.model]
    summary, curves = {}, {}
    os.makedirs(args.out, exist_ok=True)
    with tqdm(total=2 * (steps + min(steps, 100)) * len(kinds), desc="train_vae", file=sys.stderr) as bar:
        for kind in kinds:
            stats = {}
            runs = train_runs(ConvVAE, vae_loss(kind, stats=stats), batches, steps=steps, lr=args.lr,
                              backends=("torch", fused), seed=args.seed, device=device, profile_steps=5, progress=bar)
            summary[kind] = compare(runs)
            summary[kind]["max_rel_loss_diff_float64"] = agreement(
                ConvVAE, vae_loss(kind), batches, steps=steps, lr=args.lr, fused=fused, seed=args.seed, device=device,
                progress=bar)
            summary[kind].update({k: float(np.mean([s[k] for s in stats[fused][-10:]]))
                                  for k in ("recon", "kl", "mi", "marginal_kl", "tc")})
            if args.metrics:
                summary[kind]["metrics"], summary[kind]["metrics_line"] = run_metrics(runs[1]["model"], args.quick,
                                                                                      device)
            for r in runs:
                curves[f"{kind} ({'reference' if r['backend'] == 'torch' else 'dgmfast ' + r['backend']})"] = r["losses"]
    sweep = {}
    if args.sweep:
        settings = [("beta", dict(beta=b)) for b in (1.0, 4.0, 8.0)] + [("dip", dict(lambda_od=l)) for l in (1.0, 10.0)]
        for kind, kw in tqdm(settings, desc="sweep", file=sys.stderr):
            stats = {}
            run = train_run(ConvVAE, vae_loss(kind, stats=stats, **kw), batches, steps=steps, lr=args.lr,
                            backend=fused, seed=args.seed, device=device)
            key = f"{kind} " + " ".join(f"{k}={v:g}" for k, v in kw.items())
            sweep[key] = {k: float(np.mean([s[k] for s in stats[fused][-10:]])) for k in ("recon", "kl", "mi", "tc")}
            if args.metrics:
                sweep[key]["metrics_line"] = run_metrics(run["model"], args.quick, device)[1]
    plot_path = os.path.join(args.out, f"train_vae-{device.type}.png")
    plot_curves(curves, plot_path, "loss (train batch)", "VAE training on dSprites: reference vs dgmfast, same seed")
    write_json(dict(args=vars(args), summary=summary, sweep=sweep, curves=curves),
               os.path.join(args.out, f"train_vae-{device.type}.json"))
    columns = run_columns() + [(h, lambda s, k=k: f"{s[k]:.2f}") for h, k in (
        ("recon", "recon"), ("KL", "kl"), ("MI", "mi"), ("marginal KL", "marginal_kl"), ("TC", "tc"))]
    print_table(columns, [dict(s, name=kind) for kind, s in summary.items()])
    print(TABLE_NOTES)
    for kind, s in summary.items():
        if "metrics_line" in s:
            print(f"  metrics ({kind}): {s['metrics_line']}")
    for key, s in sweep.items():
        print(f"sweep {key}: recon={s['recon']:.1f} kl={s['kl']:.2f} mi={s['mi']:.2f} tc={s['tc']:.2f} "
              + s.get("metrics_line", ""))
    print(f"plot: {plot_path}")
    return summary


if __name__ == "__main__":
    main()
