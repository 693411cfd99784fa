"""Benchmark of single-volume inference: one volume through the U-Net-256 generator, slice by slice.

Times :func:`modality_translation.inference.translate.translate_slices` on a synthetic head-like volume
(default 150 axial slices of 256 x 256 voxels, 1 mm spacing, seeded) with the pix2pix bundle's
generator (``UNetGenerator`` as built by ``bundles/pix2pix_t1_t2/configs/inference.json``:
``image_size`` 256, ``generator_channels`` 64, instance norm, dropout off as in evaluation) at
random initial weights: the speed does not depend on the weights' values.

Each configuration (precision ``fp32`` / ``bf16`` autocast, batch size (float32, the slow reference,
only at 16 by default), channels-last input or not)
is split into the three steps of ``translate_slices``: slice extraction (``extract_slices`` and the
stacking), the network (``translate_stack``) and pasting (``paste_slices``). Every configuration is
warmed up on one full and one remainder batch (oneDNN builds its kernels per shape), then the list of
configurations is run ``--repeats`` times in turn, so that a change of the machine's load affects
all alike; medians are reported. Two times are recorded for each step: wall-clock time and the
process's CPU time (all its threads). On a shared machine the wall time depends on what else runs;
the CPU time divided by the threads is what the wall time would be on idle cores, as long as the
threads scale. The CPU time the rest of the machine used during each run (from ``/proc/stat``) is
recorded as well, so that one can see whether other jobs were running.

Afterwards the whole ``translate_slices`` call is timed (``--repeats`` times) for float32 at its
defaults and for the fastest bfloat16 configuration, the outputs of bfloat16 and float32 are compared
(max and mean absolute difference on the network's [-1, 1] scale: random weights only), and the
network's FLOPs per slice are counted with ``torch.utils.flop_counter.FlopCounterMode`` to give the
achieved GFLOP/s. ``--compile`` adds a ``torch.compile``d bfloat16 configuration, its compilation time
recorded separately.

    python benchmarks/bench_inference.py --output benchmarks/results/inference.json
        [--device cpu|cuda] [--batch-sizes 8 16 32] [--fp32-batch-sizes 16] [--precisions fp32 bf16] [--layouts contiguous channels_last]
        [--repeats 3] [--threads N] [--compile] [--quick]

``--quick`` runs a 12 x 64 x 64 volume through an 8-channel U-Net-64 to check that the script works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: CPU flags recorded from /proc/cpuinfo: the vector and matrix units oneDNN's kernels use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("contiguous", "channels_last")


def cpu_facts() -> dict:
    """CPU model, core count and the vector/matrix flags from /proc/cpuinfo (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}}


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def build_generator(image_size: int, generator_channels: int, in_channels: int = 1) -> torch.nn.Module:
    """The pix2pix bundle's generator (``network_def`` of its inference.json), random weights, evaluation mode."""
    from modality_translation.networks import UNetGenerator

    torch.manual_seed(0)
    channels = [min(generator_channels * 2**level, 8 * generator_channels) for level in range(int(math.log2(image_size)))]
    return UNetGenerator(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=channels, norm="instance",
                         dropout=0.5, dropout_levels=3).eval()


def synthetic_head(depth: int, size: int, seed: int = 0) -> np.ndarray:
    """A [z, y, x] float32 volume on the network scale: -1 outside an ellipsoidal head, textured tissue inside."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, depth), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    head = (x / 0.75) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2 < 1.0
    brain = (x / 0.65) ** 2 + (y / 0.8) ** 2 + (z / 0.95) ** 2 < 1.0
    tissue = np.where(brain, 0.1 + 0.3 * np.sin(9 * x) * np.cos(7 * y + 3 * z), 0.7)
    volume = np.where(head, tissue + rng.normal(0.0, 0.05, head.shape), -1.0)
    return np.clip(volume, -1.0, 1.0).astype(np.float32)


def flops_per_slice(network: torch.nn.Module, in_channels: int, size: int, device: torch.device) -> int:
    """FLOPs of one slice through the network (``FlopCounterMode``: 2 per multiply-add of convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(torch.zeros(1, in_channels, size, size, device=device))
    return int(counter.get_total_flops())


class Clock:
    """Wall, process CPU and other processes' CPU time of a block (synchronising CUDA first)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "Clock":
        self._sync()
        self.busy0, self.wall0, self.cpu0 = machine_busy_seconds(), time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        busy1 = machine_busy_seconds()
        self.others = None if self.busy0 is None or busy1 is None else max(0.0, busy1 - self.busy0 - self.cpu)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="JSON file of the results")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32], help="batch sizes of bf16")
    # float32 is the reference (and three times slower on CPUs with AMX): one batch size unless asked.
    parser.add_argument("--fp32-batch-sizes", nargs="+", type=int, default=[16], help="batch sizes of fp32")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every configuration (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--size", type=int, default=256, help="slice size and network image size")
    parser.add_argument("--depth", type=int, default=150, help="slices in the volume")
    parser.add_argument("--generator-channels", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd bf16 network")
    parser.add_argument("--quick", action="store_true", help="12 x 64 x 64 volume, 8-channel U-Net-64: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.size, args.depth, args.generator_channels = 64, 12, 8
        args.batch_sizes = [b for b in args.batch_sizes if b <= 8] or [4]
        args.fp32_batch_sizes = [b for b in args.fp32_batch_sizes if b <= 8] or [4]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)

    from modality_translation.inference.translate import translate_slices, translate_stack
    from medgan_common.atomic import atomic_write_json
    from preprocessing.slices import extract_slices, paste_slices

    device = torch.device(args.device)
    network = build_generator(args.size, args.generator_channels).to(device)
    volume = synthetic_head(args.depth, args.size)
    spacing = (1.0, 1.0, 1.0)
    load_before = os.getloadavg()
    flops = flops_per_slice(network, 1, args.size, device)

    def extract():
        slices, geometries = extract_slices(volume, axis="axial", output_shape=(args.size, args.size), pad_value=-1.0,
                                            interpolation="bilinear", spacing=spacing)
        return np.stack(slices)[:, None], geometries

    stack, geometries = extract()
    configs = [{"precision": p, "batch_size": b, "layout": layout, "compiled": False}
               for p in args.precisions for b in (args.fp32_batch_sizes if p == "fp32" else args.batch_sizes)
               for layout in args.layouts]
    compiled_network = None
    if args.compile:
        compiled_network = torch.compile(network)
        configs.append({"precision": "bf16", "batch_size": 16, "layout": "contiguous", "compiled": True})

    def network_step(config):
        net = compiled_network if config["compiled"] else network
        return translate_stack(net, stack, batch_size=config["batch_size"], amp=config["precision"] == "bf16",
                               channels_last=config["layout"] == "channels_last")

    # Warm-up: one full and one remainder batch per configuration (kernels are built per shape).
    for config in configs:
        remainder = len(stack) % config["batch_size"]
        warm = stack[: config["batch_size"] + remainder]
        net = compiled_network if config["compiled"] else network
        with Clock(device) as clock:
            translate_stack(net, warm, batch_size=config["batch_size"], amp=config["precision"] == "bf16",
                            channels_last=config["layout"] == "channels_last")
        config["warmup_seconds"] = clock.wall
        print(json.dumps({"warm-up": config}), flush=True)

    timings = [{"extract": [], "network": [], "paste": []} for _ in configs]
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):
        for config, timing in zip(configs, timings):
            with Clock(device) as clock:
                extracted, extracted_geometries = extract()
            timing["extract"].append(clock)
            with Clock(device) as clock:
                translated = network_step(config)
            timing["network"].append(clock)
            with Clock(device) as clock:
                pasted = paste_slices(list(translated), extracted_geometries)
            timing["paste"].append(clock)
            key = f"{config['precision']}-{config['batch_size']}-{config['layout']}-{config['compiled']}"
            outputs.setdefault(key, pasted)
            print(json.dumps({"repeat": repeat + 1, **{k: v for k, v in config.items() if k != "warmup_seconds"},
                              "network_s": round(timing["network"][-1].wall, 3),
                              "network_cpu_s": round(timing["network"][-1].cpu, 3)}), flush=True)

    results = []
    for config, timing in zip(configs, timings):
        row = dict(config)
        for step, clocks in timing.items():
            row[f"{step}_seconds"] = median([c.wall for c in clocks])
            row[f"{step}_cpu_seconds"] = median([c.cpu for c in clocks])
        totals = [sum(timing[s][i].wall for s in timing) for i in range(args.repeats)]
        row["total_seconds"] = median(totals)
        row["total_cpu_seconds"] = median([sum(timing[s][i].cpu for s in timing) for i in range(args.repeats)])
        others = [c.others for c in timing["network"] if c.others is not None]
        row["other_processes_cpu_seconds_during_network"] = median(others) if others else None
        row["network_seconds_all"] = [c.wall for c in timing["network"]]
        row["network_gflops_per_second"] = flops * args.depth / row["network_seconds"] / 1e9
        row["network_ms_per_slice"] = 1000 * row["network_seconds"] / args.depth
        results.append(row)

    # The whole translate_slices call: float32 at its defaults, and the fastest bf16 configuration.
    bf16_rows = [r for r in results if r["precision"] == "bf16" and not r["compiled"]]
    end_to_end = []
    candidates = ([{"precision": "fp32", "batch_size": args.fp32_batch_sizes[0], "layout": "contiguous"}]
                  if "fp32" in args.precisions else [])
    if bf16_rows:
        best = min(bf16_rows, key=lambda r: r["total_seconds"])
        candidates.append({k: best[k] for k in ("precision", "batch_size", "layout")})
    for candidate in candidates:
        clocks = []
        for _ in range(args.repeats):
            with Clock(device) as clock:
                translate_slices(network, volume, spacing, slice_size=args.size, batch_size=candidate["batch_size"],
                                 amp=candidate["precision"] == "bf16", channels_last=candidate["layout"] == "channels_last")
            clocks.append(clock)
        others = [c.others for c in clocks if c.others is not None]
        end_to_end.append({**candidate, "seconds": median([c.wall for c in clocks]),
                           "cpu_seconds": median([c.cpu for c in clocks]), "seconds_all": [c.wall for c in clocks],
                           "other_processes_cpu_seconds": median(others) if others else None})
        print(json.dumps({"translate_slices": end_to_end[-1]}), flush=True)

    # Numerical agreement with float32 at batch 16 (or the first batch size), contiguous.
    reference_key = next((k for k in outputs if k.startswith("fp32-") and k.endswith("-contiguous-False")), None)
    agreement = {}
    if reference_key is not None:
        reference = outputs[reference_key]
        head = volume > -1.0
        for key, output in outputs.items():
            difference = np.abs(output - reference)
            agreement[key] = {"max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
                              "mean_abs_in_head": float(difference[head].mean())}
        agreement["reference"] = reference_key
        agreement["reference_output_std"] = float(reference.std())
        agreement["reference_output_range"] = [float(reference.min()), float(reference.max())]

    report = {
        "benchmark": (f"translate_slices on one synthetic {args.depth} x {args.size} x {args.size} volume (1 mm), "
                      f"U-Net-{args.size} generator with {args.generator_channels} base channels (the pix2pix bundle's), "
                      "random weights; steps: extract_slices, network (translate_stack), paste_slices"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            **cpu_facts(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "device": args.device,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "volume": {"shape_zyx": list(volume.shape), "spacing_mm": list(spacing)},
        "network_flops_per_slice": flops,
        "results": results,
        "translate_slices": end_to_end,
        "bf16_vs_fp32_random_weights": agreement,
    }
    atomic_write_json(args.output, report)
    summary = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                if k in ("precision", "batch_size", "layout", "compiled", "extract_seconds", "network_seconds",
                         "network_cpu_seconds", "paste_seconds", "total_seconds", "network_gflops_per_second")}
               for r in results]
    print(json.dumps({"results": summary, "translate_slices": end_to_end, "agreement": agreement}, indent=1))


if __name__ == "__main__":
    main()
