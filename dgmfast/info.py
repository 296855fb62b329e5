"""``python -m dgmfast.info``: versions, the extension's build, and the backend each op uses per device."""
import os
import platform
import warnings

import torch

import dgmfast
from dgmfast.backends import BACKENDS, OPS, backend_refusals, forced_backend, select_backend


def report() -> str:
    lines = [f"dgmfast {dgmfast.__version__}  torch {torch.__version__} (cuda {torch.version.cuda})  "
             f"python {platform.python_version()}"]
    try:
        import triton
        lines.append(f"triton {triton.__version__}  TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    except ImportError:
        lines.append("triton: not installed")
    lines.append(f"extension dgmfast._C: {dgmfast.build_info() if dgmfast.has_extension() else 'not available'}")
    lines.append(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}  "
                 f"CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    lines.append(f"forced backend: {forced_backend() or 'auto'} (DGMFAST_BACKEND / dgmfast.use_backend)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        lines.append(f"\nbackends on {dev.type}:")
        for name in BACKENDS:
            reasons = backend_refusals(name, dev)
            lines.append(f"  {name:7s} {'available' if not reasons else 'refused: ' + '; '.join(reasons)}")
        lines.append(f"ops on {dev.type} (float32):")
        for op in sorted(OPS):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    chosen = select_backend(op, dev, torch.float32)
                except RuntimeError as e:
                    chosen = f"error: {e}"
            lines.append(f"  {op:28s} -> {chosen}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
