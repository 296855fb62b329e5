"""Time `dgmfast.metrics.evaluate` on procedural dSprites with disentanglement_lib's default
hyper-parameters (all six metrics), for the record in docs/metrics.md.

    PYTHONPATH=. python docs/time_evaluate.py [--model conv|convvae|linear] [--data dsprites|noisy]

`conv` is disentanglement_lib's convolutional encoder (4 conv layers 32-32-64-64, 4x4 stride 2,
fc 256, 10 means); `convvae` the encoder of benchmarks/train_vae.py's ConvVAE (fc 128, 10 means;
one channel, so dsprites only);
both randomly initialized: the timing does not depend on training; `linear` a linear map of the
64x64 image to 10 latents.
"""
import argparse
import os
import time

import numpy as np
import torch

from dgmfast.data import DSprites, NoisyDSprites
from dgmfast.metrics import evaluate


def conv_encoder(channels, num_latents=10):
    layers, c = [], channels
    for out in (32, 32, 64, 64):
        layers += [torch.nn.Conv2d(c, out, 4, stride=2, padding=1), torch.nn.ReLU()]
        c = out
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, num_latents))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["conv", "convvae", "linear"], default="conv")
    parser.add_argument("--data", choices=["dsprites", "noisy"], default="dsprites")
    args = parser.parse_args()
    if args.model == "convvae" and args.data != "dsprites":
        parser.error("--model convvae takes one-channel images: --data dsprites")
    torch.manual_seed(0)
    data = DSprites() if args.data == "dsprites" else NoisyDSprites()
    channels = data.observation_shape[-1]
    if args.model == "conv":
        model = conv_encoder(channels)
    elif args.model == "convvae":
        from benchmarks.train_vae import ConvVAE
        model = ConvVAE(10)
    else:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * 64 * 64, 10))
    start, cpu = time.perf_counter(), time.process_time()
    results, summary = evaluate(model, data, seed=0, progress=False)
    print(f"{args.model} on {args.data}: wall {time.perf_counter() - start:.0f} s, process CPU "
          f"{time.process_time() - cpu:.0f} s, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(summary)
    for name, scores in results.items():
        print(name, {k: round(float(v), 4) for k, v in scores.items()})
    print("load average", os.getloadavg())


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
