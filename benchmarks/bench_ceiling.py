"""The machine's achievable convolution and matrix-product throughput at the shapes the GAN networks use.

The ceiling against which :mod:`benchmarks.bench_training` states each configuration's model-FLOP
utilisation (MFU): what this machine's convolution kernels actually deliver, forward and backward
(input and weight gradients), on the layers of ResNet-9, U-Net-256 and the 70x70 PatchGAN at 256x256,
in float32 and bfloat16, in the default (NCHW) and channels-last layouts, plus one large square matrix
product per precision. Each case runs a plain network layer whose parameters and input are already
in the case's precision and layout (no autocast casts: the hardware's side of the comparison), in
this process with ``--threads`` threads, and records the FLOPs that
``torch.utils.flop_counter.FlopCounterMode`` counts for it and the median time of ``--repeats`` runs
after one untimed run. Times are per-process CPU time (all threads), as in
:mod:`benchmarks.bench_training`, so that other jobs on a shared machine do not lower the figures; on
CUDA, wall time after synchronisation.

The ceiling of a precision and thread count is the best rate of any convolution case (GFLOP per
CPU-second, or per second on CUDA); the matrix product is reported beside it. Results go to
``--output`` (default ``benchmarks/results/ceiling.json``) with the CPU's features (AVX-512, AMX,
cores), one entry per thread count (a rerun with other thread counts merges into the file).

    python benchmarks/bench_ceiling.py [--threads 1 2] [--repeats 3] [--device cpu|cuda]
        [--output benchmarks/results/ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

DEFAULT_OUTPUT = REPOSITORY / "benchmarks" / "results" / "ceiling.json"

#: Convolution cases: (name, transposed, in channels, out channels, kernel, stride, padding, input size, batch).
#: The batch is that of the engine's batched calls (2 or 3 images per generator call, 2 per discriminator call).
CONV_CASES = (
    ("resnet9 c7s1-64 (256²)", False, 1, 64, 7, 1, 3, 256, 2),
    ("resnet9 d128 (256²->128²)", False, 64, 128, 3, 2, 1, 256, 2),
    ("resnet9 residual 3x3 256 (64²)", False, 256, 256, 3, 1, 1, 64, 2),
    ("resnet9 u128 transposed (64²->128²)", True, 256, 128, 3, 2, 1, 64, 2),
    ("unet down 64->128 (128²->64²)", False, 64, 128, 4, 2, 1, 128, 2),
    ("unet down 256->512 (32²->16²)", False, 256, 512, 4, 2, 1, 32, 2),
    ("unet up 1024->512 transposed (8²->16²)", True, 1024, 512, 4, 2, 1, 8, 2),
    ("unet up 256->64 transposed (64²->128²)", True, 256, 64, 4, 2, 1, 64, 2),
    ("patchgan 4x4 s1 256->512 (32²)", False, 256, 512, 4, 1, 1, 32, 2),
)
MATMUL_SIZE = 2048


def cpu_features() -> dict:
    """The CPU's model, core count and vector / matrix extensions (from ``/proc/cpuinfo`` where it exists)."""
    import torch

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
                elif key.strip() == "model name":
                    model = value.strip()
    except OSError:
        pass
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "avx512": sorted(f for f in flags if f.startswith("avx512")),
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "onednn": torch.backends.mkldnn.is_available(),
    }


def _timer(device: str):
    import torch

    if device == "cuda":
        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.process_time


def measure(run, device: str, repeats: int) -> float:
    """Median seconds of ``run()`` over ``repeats`` runs after one untimed run."""
    now = _timer(device)
    run()
    times = []
    for _ in range(repeats):
        start = now()
        run()
        times.append(now() - start)
    return statistics.median(times)


def count_flops(run) -> int:
    """FLOPs of one ``run()`` as ``FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def conv_case(case: tuple, dtype, channels_last: bool, device: str):
    """A closure running one forward and backward pass (input and weight gradients) of the case's layer."""
    import torch

    _, transposed, c_in, c_out, kernel, stride, padding, size, batch = case
    generator = torch.Generator().manual_seed(0)
    if transposed:
        layer = torch.nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding=stride - 1 if kernel == 3 else 0)
    else:
        layer = torch.nn.Conv2d(c_in, c_out, kernel, stride, padding)
    layer = layer.to(device=device, dtype=dtype)
    x = torch.randn(batch, c_in, size, size, generator=generator).to(device=device, dtype=dtype)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = None

    def run() -> None:
        nonlocal grad
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        if grad is None:
            grad = torch.randn(y.shape, generator=generator).to(device=device, dtype=dtype)
            if channels_last:
                grad = grad.contiguous(memory_format=torch.channels_last)
        y.backward(grad)

    return run


def matmul_case(dtype, device: str):
    """A closure running one ``MATMUL_SIZE``-square matrix product."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device=device, dtype=dtype) for _ in range(2))

    def run() -> None:
        torch.mm(a, b)

    return run


def run_ceiling(threads: int, repeats: int, device: str) -> dict:
    """Every case in both precisions (and both layouts on CPU) at ``threads`` threads; the best rates."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    layouts = (False, True)
    for dtype_name in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_name)
        for case in CONV_CASES:
            for channels_last in layouts:
                run = conv_case(case, dtype, channels_last, device)
                flops = count_flops(run)
                seconds = measure(run, device, repeats)
                rows.append({"case": case[0], "kind": "conv fwd+bwd", "dtype": dtype_name,
                             "layout": "channels_last" if channels_last else "nchw", "batch": case[-1],
                             "flops": flops, "seconds": seconds, "gflops": flops / seconds / 1e9})
                print(json.dumps({k: rows[-1][k] for k in ("case", "dtype", "layout", "gflops")}), flush=True)
        run = matmul_case(dtype, device)
        flops = count_flops(run)
        seconds = measure(run, device, repeats)
        rows.append({"case": f"matmul {MATMUL_SIZE}x{MATMUL_SIZE}", "kind": "matmul", "dtype": dtype_name, "layout": "-",
                     "flops": flops, "seconds": seconds, "gflops": flops / seconds / 1e9})
        print(json.dumps({k: rows[-1][k] for k in ("case", "dtype", "gflops")}), flush=True)
    ceiling = {}
    for dtype_name in ("float32", "bfloat16"):
        convs = [r for r in rows if r["dtype"] == dtype_name and r["kind"] == "conv fwd+bwd"]
        best = max(convs, key=lambda r: r["gflops"])
        matmul = next(r for r in rows if r["dtype"] == dtype_name and r["kind"] == "matmul")
        ceiling[dtype_name] = {"conv_gflops": best["gflops"], "conv_case": f"{best['case']}, {best['layout']}",
                               "matmul_gflops": matmul["gflops"]}
    return {"threads": threads, "device": device, "load_average_after": os.getloadavg()[0],
            "ceiling": ceiling, "cases": rows}


def load_ceiling(path: Path, threads: int, device: str = "cpu") -> dict | None:
    """The ceiling entry of ``path`` for ``threads`` threads on ``device``, or ``None`` when it has none."""
    if not Path(path).is_file():
        return None
    report = json.loads(Path(path).read_text())
    for entry in report.get("runs", []):
        if entry["threads"] == threads and entry["device"] == device:
            return entry["ceiling"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    import torch

    from medgan_common.atomic import atomic_write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    runs = [run_ceiling(threads, args.repeats, args.device) for threads in args.threads]
    previous = json.loads(args.output.read_text()).get("runs", []) if args.output.is_file() else []
    measured = {(r["threads"], r["device"]) for r in runs}
    report = {
        "benchmark": "convolution forward + backward (input and weight gradients) at the networks' layer shapes, "
                     f"and a {MATMUL_SIZE}-square matrix product; FLOPs from torch.utils.flop_counter; per-process "
                     "CPU time on CPU (GFLOP per CPU-second), wall time on CUDA; median of the repeats",
        "machine": cpu_features(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "runs": [r for r in previous if (r["threads"], r["device"]) not in measured] + runs,
    }
    atomic_write_json(args.output, report)
    for run in runs:
        print(json.dumps({"threads": run["threads"], "device": run["device"], "ceiling": run["ceiling"]}, indent=1))


if __name__ == "__main__":
    main()
