"""The main job: the benchmark table, then short versions of both end-to-end training comparisons.

    python -m benchmarks.main [--quick] [--device cpu|cuda]

Long versions: python -m benchmarks.train_flow --steps 1000 --dequant both,
python -m benchmarks.train_vae --steps 2000 --metrics --sweep.
"""
import argparse

import torch

from benchmarks import run, train_flow, train_vae


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="first shape per op in the table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    run.main(["--device", args.device] + (["--quick"] if args.quick else []))
    train_flow.main(["--device", args.device, "--quick", "--dequant", "both"])
    train_vae.main(["--device", args.device, "--quick"])


if __name__ == "__main__":
    main()
