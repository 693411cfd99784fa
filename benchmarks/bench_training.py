"""Benchmark of GAN training iterations: the engines against the reference update rules.

Times full CycleGAN iterations (both generators, both discriminators, identity loss, image pools,
Adam) at 256x256, batch 1, with the ResNet-9 and U-Net-256 generators and the 70x70 PatchGAN of
``modality_translation.networks`` (``--generators resnet9 unet256``), full pix2pix iterations
(``--generators pix2pix``: the U-Net-256 generator with dropout 0.5, the conditional 70x70 PatchGAN
on the two-channel (source, image) pair, BCE + 100 x L1, Adam), and full UNIT iterations
(``--generators unit``: the UNIT bundle's baseline network, both encoders and generators with their
shared blocks, 64 base channels, and two 5-level discriminators; BCE, reconstruction, KL, cycle and
cycle-KL terms with the paper's weights, Adam):

- ``reference``: the update of the reference implementation, float32, written out here in plain
  PyTorch on the same networks: Zhu et al.'s ``CycleGANModel.optimize_parameters`` (six separate
  generator calls, discriminators frozen during the generator step, real and fake discriminator
  passes separate) or Isola et al.'s ``Pix2PixModel.optimize_parameters`` (one generator pass; the
  discriminator updated first on the detached generated pair and the real pair in separate calls,
  then the generator against the updated, frozen discriminator) or Liu et al.'s UNIT trainer
  (``dis_update`` then ``gen_update``: the discriminators updated first on translations of their own
  encoder and generator passes, then every encoder and generator pass computed again, one network
  call each, for the generator update; the discriminators are not frozen during it);
- ``engine``: :class:`modality_translation.engines.CycleGANTrainer`,
  :class:`modality_translation.engines.Pix2PixTrainer` or :class:`modality_translation.engines.UNITTrainer`
  (float32, batched calls where the networks allow it);
- ``engine-bf16``: the same with bfloat16 autocast; ``engine-bf16-cl`` adds channels-last layout (the
  fast path on CPUs with bfloat16 matrix units, whose oneDNN kernels take channels-last bfloat16
  tensors); ``engine-bf16-compile`` compiles the networks (``compile_networks``): its compilation
  happens in the warm-up iterations, whose times are recorded separately (``warmup_seconds``).

Both sides use the same networks and the same optimiser (:func:`~modality_translation.engines.adam_optimizer`,
fused Adam), so the comparison is of the update rule and its execution, not of the optimiser kernel.

Model-FLOP utilisation (MFU): the FLOPs of one iteration are counted once per configuration with
``torch.utils.flop_counter.FlopCounterMode`` in the first warm-up iteration (not for compiled
variants); the MFU of a configuration is the reference's FLOPs per iteration (the model's work; the
engine's batched calls do the same convolutions) divided by its time per iteration and by the
ceiling of ``benchmarks/bench_ceiling.py`` (``--ceiling``, default ``benchmarks/results/ceiling.json``)
at the same thread count: the best measured bfloat16 convolution rate (``mfu``) and the best rate in
the configuration's own precision (``mfu_own_precision``). On CPU the times are per-process CPU
time and the ceiling is in FLOP per CPU-second; on CUDA both are wall time.

Each configuration runs in its own process with a fixed thread count (``--threads``), after
``--warmup`` iterations, and the whole list of configurations is repeated ``--rounds`` times so
that a change in the machine's load affects all variants alike. Two times are recorded per
iteration: wall-clock time and the process's CPU time (all its threads). On a shared machine the
wall time depends on what else runs; with one thread the CPU time does not, and is what the wall
time would be on an idle core, so speed-ups are reported on both. The median over rounds and
timed iterations is reported, with the load average. On CUDA
(when available) batch 1 and 16 are timed too. Results go to the ``--output`` JSON file.
``--size`` (default 256) and ``--unit-channels`` (default 64) shrink the images and the UNIT network
for a quick check that the script runs; the figures quoted in the docs are at the defaults.

    python benchmarks/bench_training.py --output benchmarks/results/training.json
        [--ceiling benchmarks/results/ceiling.json] [--threads 1 2] [--generators resnet9 unet256 pix2pix unit] [--variants reference engine engine-bf16 engine-bf16-cl]
        [--iterations 2] [--warmup 1] [--rounds 3] [--device cpu cuda] [--size 256] [--unit-channels 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

#: Seconds per iteration of the reference implementation measured on the 2-core development machine.
REFERENCE_SECONDS_2CORE = {"resnet9": 5.2, "unet256": 1.45}
#: Generators of the CycleGAN benchmark, the pix2pix model and the UNIT model.
MODELS = ("resnet9", "unet256", "pix2pix", "unit")
VARIANTS = ("reference", "engine", "engine-bf16", "engine-bf16-cl", "engine-bf16-compile")
SIZE = 256


def build_networks(generator: str):
    import torch

    from modality_translation.networks import PatchGANDiscriminator, ResNetGenerator, UNetGenerator

    torch.manual_seed(0)
    make = {"resnet9": lambda: ResNetGenerator(num_blocks=9), "unet256": lambda: UNetGenerator()}[generator]
    return make(), make(), PatchGANDiscriminator(), PatchGANDiscriminator()


def build_pix2pix_networks():
    """The pix2pix bundle's networks at 256x256: U-Net-256 with dropout 0.5, conditional 70x70 PatchGAN."""
    import torch

    from modality_translation.networks import PatchGANDiscriminator, UNetGenerator

    torch.manual_seed(0)
    return UNetGenerator(dropout=0.5), PatchGANDiscriminator(in_channels=2)


def build_unit_networks(channels: int = 64):
    """The UNIT bundle's baseline networks: encoders and generators with their shared blocks, two 5-level discriminators."""
    import torch

    from modality_translation.networks import UNITDiscriminator, UNITNetwork

    torch.manual_seed(0)
    return UNITNetwork(channels=channels), UNITDiscriminator(), UNITDiscriminator()


def l1_loss(a, b):
    return (a - b).abs().mean()


def reference_iteration(nets, optimizers, pools, criterion, real_a, real_b, lambda_cycle=10.0, lambda_identity=0.5):
    """One iteration of the reference CycleGAN update rule (float32, separate network calls)."""
    g_a, g_b, d_a, d_b = nets
    optimizer_g, optimizer_d = optimizers
    fake_b = g_a(real_a)
    rec_a = g_b(fake_b)
    fake_a = g_b(real_b)
    rec_b = g_a(fake_a)
    for net in (d_a, d_b):
        for p in net.parameters():
            p.requires_grad_(False)
    optimizer_g.zero_grad()
    idt_a = g_a(real_b)
    idt_b = g_b(real_a)
    loss_g = (
        criterion.generator_loss(d_a(fake_b))
        + criterion.generator_loss(d_b(fake_a))
        + lambda_cycle * (l1_loss(rec_a, real_a) + l1_loss(rec_b, real_b))
        + lambda_cycle * lambda_identity * (l1_loss(idt_a, real_b) + l1_loss(idt_b, real_a))
    )
    loss_g.backward()
    optimizer_g.step()
    for net in (d_a, d_b):
        for p in net.parameters():
            p.requires_grad_(True)
    optimizer_d.zero_grad()
    for net, real, fake, pool in ((d_a, real_b, fake_b, pools[0]), (d_b, real_a, fake_a, pools[1])):
        fake = pool.query(fake)
        loss_d = 0.5 * criterion.discriminator_loss(net(real), net(fake.detach()))
        loss_d.backward()
    optimizer_d.step()


def pix2pix_reference_iteration(nets, optimizers, criterion, real_a, real_b, lambda_l1=100.0):
    """One iteration of the reference pix2pix update rule (float32): D first, then G against the updated D."""
    import torch

    generator, discriminator = nets
    optimizer_g, optimizer_d = optimizers
    fake_b = generator(real_a)
    for p in discriminator.parameters():
        p.requires_grad_(True)
    optimizer_d.zero_grad()
    fake_ab = torch.cat([real_a, fake_b], dim=1)
    loss_d = 0.5 * criterion.discriminator_loss(discriminator(torch.cat([real_a, real_b], dim=1)),
                                                discriminator(fake_ab.detach()))
    loss_d.backward()
    optimizer_d.step()
    for p in discriminator.parameters():
        p.requires_grad_(False)
    optimizer_g.zero_grad()
    loss_g = criterion.generator_loss(discriminator(fake_ab)) + lambda_l1 * l1_loss(fake_b, real_b)
    loss_g.backward()
    optimizer_g.step()


def unit_reference_iteration(nets, optimizers, criterion, x_a, x_b, weights):
    """One iteration of the authors' UNIT update (float32): ``dis_update``, then ``gen_update``, one call per pass."""
    import torch

    from modality_translation.losses import latent_kl

    unit, d_a, d_b = nets
    optimizer_g, optimizer_d = optimizers
    encode = {"a": unit.encoder_a, "b": unit.encoder_b}
    decode = {"a": unit.generator_a, "b": unit.generator_b}

    def sample(mu):
        return mu + torch.randn_like(mu)

    optimizer_d.zero_grad()
    h_a, h_b = encode["a"](x_a), encode["b"](x_b)
    x_ba, x_ab = decode["a"](sample(h_b)), decode["b"](sample(h_a))
    loss_d = (criterion.discriminator_loss(d_a(x_a), d_a(x_ba.detach()))
              + criterion.discriminator_loss(d_b(x_b), d_b(x_ab.detach())))
    loss_d.backward()
    optimizer_d.step()

    optimizer_g.zero_grad()
    h_a, h_b = encode["a"](x_a), encode["b"](x_b)
    z_a, z_b = sample(h_a), sample(h_b)
    x_a_recon, x_b_recon = decode["a"](z_a), decode["b"](z_b)
    x_ba, x_ab = decode["a"](z_b), decode["b"](z_a)
    h_b_recon, h_a_recon = encode["a"](x_ba), encode["b"](x_ab)
    x_aba, x_bab = decode["a"](sample(h_a_recon)), decode["b"](sample(h_b_recon))
    loss_g = (
        weights["lambda_adversarial"] * (criterion.generator_loss(d_a(x_ba)) + criterion.generator_loss(d_b(x_ab)))
        + weights["lambda_reconstruction"] * (l1_loss(x_a_recon, x_a) + l1_loss(x_b_recon, x_b))
        + weights["lambda_kl"] * (latent_kl(h_a) + latent_kl(h_b))
        + weights["lambda_cycle"] * (l1_loss(x_aba, x_a) + l1_loss(x_bab, x_b))
        + weights["lambda_cycle_kl"] * (latent_kl(h_a_recon) + latent_kl(h_b_recon))
    )
    loss_g.backward()
    optimizer_g.step()


def time_configuration(generator: str, variant: str, threads: int, device: str, batch_size: int,
                       iterations: int, warmup: int, size: int = SIZE, unit_channels: int = 64) -> dict:
    """Time ``iterations`` iterations after ``warmup`` ones; runs in the calling process."""
    import torch
    from ignite.engine import Events

    from modality_translation.engines import (
        UNIT_LOSS_WEIGHTS,
        CycleGANTrainer,
        ImagePool,
        Pix2PixTrainer,
        UNITTrainer,
        adam_optimizer,
    )
    from modality_translation.losses import AdversarialLoss

    torch.set_num_threads(threads)
    pix2pix, unit = generator == "pix2pix", generator == "unit"
    if pix2pix:
        nets = build_pix2pix_networks()
    elif unit:
        nets = build_unit_networks(unit_channels)
    else:
        nets = build_networks(generator)
    nets = [net.to(device) for net in nets]
    # Generators first: the UNIT network (encoders and generators) against two discriminators.
    half = 1 if unit else len(nets) // 2
    g_optimizer, d_optimizer = adam_optimizer(nets[:half]), adam_optimizer(nets[half:])
    generator_rng = torch.Generator().manual_seed(1)
    batches = [
        {key: torch.rand(batch_size, 1, size, size, generator=generator_rng) * 2 - 1 for key in ("A", "B")}
        for _ in range(4)
    ]
    total = warmup + iterations
    durations: list[float] = []
    cpu_durations: list[float] = []
    # FLOPs of the first (warm-up) iteration; compiled graphs are not counted (the counter would see
    # the compilation's tracing, not the kernels).
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False) if warmup > 0 and not variant.endswith("-compile") else None

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    if variant == "reference":
        if pix2pix:
            criterion = AdversarialLoss("bce")

            def step(a, b):
                pix2pix_reference_iteration(nets, (g_optimizer, d_optimizer), criterion, a, b)
        elif unit:
            criterion = AdversarialLoss("bce")

            def step(a, b):
                unit_reference_iteration(nets, (g_optimizer, d_optimizer), criterion, a, b, UNIT_LOSS_WEIGHTS)
        else:
            criterion = AdversarialLoss("least_squares")
            pools = (ImagePool(50), ImagePool(50))

            def step(a, b):
                reference_iteration(nets, (g_optimizer, d_optimizer), pools, criterion, a, b)

        for i in range(total):
            batch = batches[i % len(batches)]
            synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            if i == 0 and counter is not None:
                with counter:
                    step(batch["A"].to(device), batch["B"].to(device))
            else:
                step(batch["A"].to(device), batch["B"].to(device))
            synchronize()
            durations.append(time.perf_counter() - start)
            cpu_durations.append(time.process_time() - cpu_start)
    else:
        loader = [batches[i % len(batches)] for i in range(total)]
        engine_options = dict(
            amp=variant.startswith("engine-bf16"), amp_dtype="bfloat16",
            channels_last=variant.endswith("-cl"), compile_networks=variant.endswith("-compile"),
            epoch_length=total,
        )
        if pix2pix:
            trainer = Pix2PixTrainer(device, 1, loader, *nets, g_optimizer, d_optimizer,
                                     adversarial_loss=AdversarialLoss("bce", discriminator_scale=0.5), **engine_options)
        elif unit:
            trainer = UNITTrainer(device, 1, loader, *nets, g_optimizer, d_optimizer,
                                  adversarial_loss=AdversarialLoss("bce"), **engine_options)
        else:
            trainer = CycleGANTrainer(device, 1, loader, *nets, g_optimizer, d_optimizer,
                                      adversarial_loss=AdversarialLoss("least_squares", discriminator_scale=0.5),
                                      **engine_options)
        starts: list[tuple[float, float]] = []

        def started(engine):
            synchronize()
            starts.append((time.perf_counter(), time.process_time()))
            if engine.state.iteration == 1 and counter is not None:
                counter.__enter__()

        def completed(engine):
            if engine.state.iteration == 1 and counter is not None:
                counter.__exit__(None, None, None)
            synchronize()
            durations.append(time.perf_counter() - starts[-1][0])
            cpu_durations.append(time.process_time() - starts[-1][1])

        trainer.add_event_handler(Events.ITERATION_STARTED, started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
        trainer.run()
    timed = durations[warmup:]
    median = statistics.median(timed)
    cpu_timed = cpu_durations[warmup:]
    return {
        "generator": generator,
        "variant": variant,
        "device": device,
        "threads": threads,
        "batch_size": batch_size,
        "size": size,
        **({"unit_channels": unit_channels} if unit else {}),
        "seconds_per_iteration": median,
        "iterations_per_second": 1.0 / median,
        "images_per_second": batch_size / median,
        "timed_iterations": timed,
        "warmup_seconds": durations[:warmup],
        "cpu_seconds_per_iteration": statistics.median(cpu_timed),
        "timed_cpu_seconds": cpu_timed,
        "load_average_after": os.getloadavg()[0],
        "flops_per_iteration": counter.get_total_flops() if counter is not None else None,
    }


def run_in_subprocess(config: dict) -> dict:
    """Time one configuration in a fresh process (thread pools and allocator caches do not carry over)."""
    command = [sys.executable, __file__, "--single", json.dumps(config)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {**config, "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def merge_rounds(runs: list[dict]) -> dict:
    """One result per configuration: the median over every timed iteration of every round."""
    valid = [r for r in runs if "error" not in r]
    if not valid:
        return runs[-1]
    timed = [t for r in valid for t in r["timed_iterations"]]
    cpu_timed = [t for r in valid for t in r["timed_cpu_seconds"]]
    median = statistics.median(timed)
    merged = {k: v for k, v in valid[0].items() if k not in ("timed_iterations", "timed_cpu_seconds", "load_average_after")}
    merged.update(
        seconds_per_iteration=median,
        iterations_per_second=1.0 / median,
        images_per_second=merged["batch_size"] / median,
        cpu_seconds_per_iteration=statistics.median(cpu_timed),
        timed_iterations=timed,
        timed_cpu_seconds=cpu_timed,
        load_averages=[r["load_average_after"] for r in valid],
        flops_per_iteration=next((r["flops_per_iteration"] for r in valid if r.get("flops_per_iteration")), None),
        warmup_seconds=[t for r in valid for t in r.get("warmup_seconds", [])],
    )
    return merged


def summarise(results: list[dict], ceilings: dict | None = None) -> list[dict]:
    """Speed-up of every engine variant over the reference measured in the same setting, and its MFU.

    Args:
        results: merged results of every configuration.
        ceilings: ``{(device, threads): ceiling}`` from ``bench_ceiling.py`` (GFLOP/s per precision);
            no MFU where a configuration has none.
    """
    ceilings = ceilings or {}
    reference = {
        (r["generator"], r["device"], r["threads"], r["batch_size"]): r
        for r in results if r.get("variant") == "reference" and "error" not in r
    }
    rows = []
    for r in results:
        if "error" in r:
            continue
        key = (r["generator"], r["device"], r["threads"], r["batch_size"])
        row = {k: r[k] for k in ("generator", "variant", "device", "threads", "batch_size", "seconds_per_iteration",
                                 "cpu_seconds_per_iteration")}
        if key in reference:
            row["speedup_vs_reference_wall"] = reference[key]["seconds_per_iteration"] / r["seconds_per_iteration"]
            row["speedup_vs_reference_cpu_time"] = (
                reference[key]["cpu_seconds_per_iteration"] / r["cpu_seconds_per_iteration"]
            )
        if (r["device"] == "cpu" and r["batch_size"] == 1 and r.get("size", SIZE) == SIZE
                and r["generator"] in REFERENCE_SECONDS_2CORE):
            figure = REFERENCE_SECONDS_2CORE[r["generator"]]
            row["speedup_vs_reference_2core_figure_wall"] = figure / r["seconds_per_iteration"]
            if r["threads"] == 1:
                # One thread's CPU time is its wall time on an idle core: a conservative comparison
                # with the reference's two-thread figure.
                row["speedup_vs_reference_2core_figure_cpu_time"] = figure / r["cpu_seconds_per_iteration"]
        flops = reference[key].get("flops_per_iteration") if key in reference else None
        flops = flops or r.get("flops_per_iteration")
        ceiling = ceilings.get((r["device"], r["threads"] if r["device"] == "cpu" else None))
        if flops:
            row["gflops_per_iteration"] = flops / 1e9
        if flops and ceiling:
            # On CPU per CPU-second (the ceiling is measured the same way), on CUDA per second.
            seconds = r["cpu_seconds_per_iteration"] if r["device"] == "cpu" else r["seconds_per_iteration"]
            rate = flops / seconds / 1e9
            own = "bfloat16" if "bf16" in r["variant"] else "float32"
            row["achieved_gflops"] = rate
            row["mfu"] = rate / ceiling["bfloat16"]["conv_gflops"]
            row["mfu_own_precision"] = rate / ceiling[own]["conv_gflops"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="JSON file of the results")
    parser.add_argument("--generators", nargs="+", default=["resnet9", "unet256"], choices=MODELS,
                        help="CycleGAN generators (resnet9, unet256), pix2pix (its U-Net-256 and conditional PatchGAN) "
                             "and/or unit (the UNIT network and two 5-level discriminators)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:3]), choices=VARIANTS)
    # One thread by default: on a shared 2-core machine a second thread mostly waits for a busy core.
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if available)")
    parser.add_argument("--cuda-batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ceiling", type=Path, default=REPOSITORY / "benchmarks" / "results" / "ceiling.json",
                        help="bench_ceiling.py's results: the MFU's ceiling per thread count (none: no MFU)")
    parser.add_argument("--size", type=int, default=SIZE,
                        help="image size (default 256, the benchmark's; smaller only to check that the script runs)")
    parser.add_argument("--unit-channels", type=int, default=64,
                        help="base channels of the UNIT network (default 64, the paper's)")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single:
        config = json.loads(args.single)
        print(json.dumps(time_configuration(**config)))
        return
    if args.output is None:
        parser.error("--output is required")

    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    configs = []
    for device in devices:
        batch_sizes = args.cuda_batch_sizes if device == "cuda" else [1]
        thread_counts = args.threads if device == "cpu" else [args.threads[0]]
        for generator in args.generators:
            for threads in thread_counts:
                for batch_size in batch_sizes:
                    for variant in args.variants:
                        if variant == "engine-bf16-cl" and device == "cuda":
                            continue
                        configs.append({
                            "generator": generator, "variant": variant, "threads": threads, "device": device,
                            "batch_size": batch_size, "iterations": args.iterations, "warmup": args.warmup,
                            "size": args.size, "unit_channels": args.unit_channels,
                        })
    runs: list[list[dict]] = [[] for _ in configs]
    for round_index in range(args.rounds):
        for index, config in enumerate(configs):
            result = run_in_subprocess(config)
            runs[index].append(result)
            shown = {k: result.get(k) for k in ("generator", "variant", "device", "threads", "batch_size",
                                                "seconds_per_iteration", "cpu_seconds_per_iteration", "error")}
            print(json.dumps({"round": round_index + 1, **shown}), flush=True)
    results = [merge_rounds(config_runs) for config_runs in runs]

    from benchmarks.bench_ceiling import cpu_features, load_ceiling
    from medgan_common.atomic import atomic_write_json

    ceilings = {("cpu", threads): load_ceiling(args.ceiling, threads) for threads in args.threads}
    ceilings[("cuda", None)] = load_ceiling(args.ceiling, 1, "cuda")
    report = {
        "benchmark": f"training iteration, {args.size}x{args.size}, batch 1 on CPU, Adam; CycleGAN: identity loss on, "
                     "pools of 50; pix2pix: BCE + 100 x L1, conditional PatchGAN; UNIT: the bundle's baseline "
                     f"network ({args.unit_channels} base channels), BCE, reconstruction, KL, cycle and cycle-KL terms",
        "machine": {
            **cpu_features(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "timing": "per-process CPU time (all threads) is the primary figure on a shared machine; wall time beside it",
        "ceiling": {f"{device} {threads or ''}".strip(): c for (device, threads), c in ceilings.items() if c},
        "reference_seconds_per_iteration_2core": REFERENCE_SECONDS_2CORE,
        "results": results,
        "summary": summarise(results, ceilings),
    }
    atomic_write_json(args.output, report)
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
