"""medp2p against the reference pix2pix, in one process, on the same inputs (docs/results.md).

The reference is a faithful copy of the widely used PyTorch pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix):
``unet_256`` generator (batch norm, dropout), 70x70 ``NLayerDiscriminator`` (batch norm), vanilla
GAN loss (BCE with logits) + 100 * L1, Adam(2e-4, 0.5, 0.999), fp32, NCHW, ``optimize_parameters``
step order. medp2p runs the same architecture (``norm: batch``) through its own training step
and inference path with its defaults for the device (bfloat16 autocast and channels_last on a
CPU with bf16 matrix units, AMP on CUDA). Runs alternate, so drifts in machine speed hit both.

    python benchmarks/speed.py                 # training, inference, volume, memory
    python benchmarks/speed.py --only train    # one part: train, infer, volume, memory

Printed: images/s of each, the ratios, and the fractions of the measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medp2p.device.allocator import MALLOC_ENV, reuse_freed_memory  # noqa: E402  (after the path)

# ------------------------------------------------------------------------ the reference pix2pix


class UnetSkipConnectionBlock(nn.Module):
    """pix2pix ``UnetSkipConnectionBlock``: X -> [down, submodule, up] -> cat(X, up)."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        input_nc = input_nc or outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nn.BatchNorm2d(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm] + ([nn.Dropout(0.5)] if use_dropout else [])
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def reference_unet256(input_nc: int = 1, output_nc: int = 1, ngf: int = 64) -> nn.Module:
    """pix2pix ``UnetGenerator(input_nc, output_nc, 8, ngf, BatchNorm2d, use_dropout=True)``."""
    block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(3):
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=True)
    block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
    block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
    block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
    return UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)


def reference_patchgan(input_nc: int = 2, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """pix2pix ``NLayerDiscriminator`` with batch norm (the 70x70 PatchGAN)."""
    seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2**n_layers, 8)
    seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*seq)


class ReferencePix2Pix:
    """pix2pix ``Pix2PixModel.optimize_parameters``: forward, D step, G step (fp32, NCHW)."""

    def __init__(self) -> None:
        self.G, self.D = reference_unet256(), reference_patchgan()
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.gan, self.l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()

    def _gan(self, pred, real: bool):
        return self.gan(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> None:
        fake_B = self.G(real_A)
        for p in self.D.parameters():
            p.requires_grad = True
        self.opt_D.zero_grad()
        loss_D = 0.5 * (
            self._gan(self.D(torch.cat((real_A, fake_B), 1).detach()), False) + self._gan(self.D(torch.cat((real_A, real_B), 1)), True)
        )
        loss_D.backward()
        self.opt_D.step()
        for p in self.D.parameters():
            p.requires_grad = False
        self.opt_G.zero_grad()
        loss_G = self._gan(self.D(torch.cat((real_A, fake_B), 1)), True) + self.l1(fake_B, real_B) * 100.0
        loss_G.backward()
        self.opt_G.step()


# ---------------------------------------------------------------------------------- medp2p's side
def medp2p_config(overrides: list[str] = ()):
    from medp2p.config import load_config

    base = ["model.norm=batch", "model.disc_norm=batch", "data.context_slices=0", "loss.l1_in_mask=false", "train.batch_size=4"]
    return load_config("mri2ct", None, [*base, *overrides])


def medp2p_trainer(cfg, device: torch.device):
    """medp2p's training step for ``cfg``: the public ``build_trainer`` that ``medp2p train`` uses (no data loading)."""
    from medp2p.plan import build_plan
    from medp2p.train import build_trainer

    trainer = build_trainer(build_plan(cfg), device)
    return trainer.step_fn, trainer.G


def medp2p_predictor(cfg, device: torch.device, compile_freeze: bool = False):
    """medp2p's generator for ``cfg`` as ``load_model`` prepares it for ``medp2p predict``: its
    prediction layout, then frozen compilation (``--compile``) or the eager rewrite."""
    from medp2p.device.precision import compile_for_inference, memory_format, resolve_precision
    from medp2p.models.inference import optimize_for_inference
    from medp2p.plan import build_plan

    layout = memory_format(device, resolve_precision(device, cfg.train.precision), cfg.train.channels_last)
    G = build_plan(cfg).build_generator().to(device, memory_format=layout).eval()
    return compile_for_inference(G) if compile_freeze else optimize_for_inference(G)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, trials: int = 7) -> float:
    """Measured dense matmul throughput (GFLOP/s) at ``dtype``: the device's practical peak.

    The best of ``trials`` timings: one timing on a shared 2-core machine has read anywhere from
    92 to 175 GFLOP/s, and a peak taken low would flatter every fraction of it.
    """
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps = 5 if device.type == "cpu" else 50
    return max(2 * n**3 * reps / timed(lambda: a @ b, reps, device) / 1e9 for _ in range(trials))


# ------------------------------------------------------------------------------------ the figures
def bench_train(device: torch.device, batch: int, rounds: int, steps: int, compile_step: bool = False) -> dict:
    from medp2p.types import SOURCE, TARGET

    torch.manual_seed(0)
    ref = ReferencePix2Pix()
    ref.G.to(device), ref.D.to(device)
    ours, _ = medp2p_trainer(medp2p_config([f"train.batch_size={batch}", f"train.compile={str(compile_step).lower()}"]), device)
    a = torch.rand(batch, 1, 256, 256, device=device) * 2 - 1
    b = torch.rand(batch, 1, 256, 256, device=device) * 2 - 1
    batch_dict = {SOURCE: a, TARGET: b}
    ref.step(a, b), ours(0, batch_dict), ours(0, batch_dict)  # warm-up (oneDNN caches; compilation)
    t_ref, t_ours = [], []
    for _ in range(rounds):
        t_ref.append(timed(lambda: ref.step(a, b), steps, device) / (steps * batch))
        with reuse_freed_memory():  # as `medp2p train` holds it around its steps
            ours(0, batch_dict)  # the loop's earlier steps
            t_ours.append(timed(lambda: ours(0, batch_dict), steps, device) / (steps * batch))
    ref_ips, ours_ips = 1 / float(np.median(t_ref)), 1 / float(np.median(t_ours))
    return {"batch": batch, "compiled": compile_step, "reference_img_s": ref_ips, "medp2p_img_s": ours_ips, "ratio": ours_ips / ref_ips}


def bench_infer(device: torch.device, rounds: int, n: int, compile_freeze: bool) -> dict:
    """Generator inference: the reference (fp32 NCHW, batch 1, as its test script) vs medp2p's path."""
    from medp2p.device.precision import autocast, resolve_precision

    torch.manual_seed(0)
    ref = reference_unet256().to(device).eval()
    run = medp2p_predictor(medp2p_config(), device, compile_freeze)
    dtype = resolve_precision(device, "auto")
    x1 = torch.rand(1, 1, 256, 256, device=device)
    xb = torch.rand(16, 1, 256, 256, device=device).contiguous(memory_format=torch.channels_last)

    def ours():
        with torch.inference_mode(), autocast(device, dtype):
            run(xb)

    def reference():
        with torch.no_grad():
            ref(x1)

    ours(), reference()
    t_ref, t_ours = [], []
    for _ in range(rounds):
        t_ref.append(timed(reference, n, device) / n)
        with reuse_freed_memory():  # as predict_volume's slice loop holds it
            ours()  # the loop's first batch
            t_ours.append(timed(ours, max(1, n // 16), device) / (16 * max(1, n // 16)))
    ref_ips, ours_ips = 1 / float(np.median(t_ref)), 1 / float(np.median(t_ours))
    return {"reference_img_s": ref_ips, "medp2p_generator_img_s": ours_ips, "ratio": ours_ips / ref_ips}


def bench_volume(device: torch.device, slices: int, rounds: int) -> dict:
    """End to end (read NIfTI -> predict every slice -> write NIfTI) vs the bare forward on as many slices."""
    from medp2p.device.precision import autocast, resolve_precision
    from medp2p.infer.volume import RunOptions, predict_volume
    from medp2p.io import read_volume, write_volume
    from medp2p.plan import build_plan
    from medp2p.types import Volume

    cfg = medp2p_config()
    G = medp2p_predictor(cfg, device)  # as `medp2p predict` loads it; the bare forward runs the same
    prep = build_plan(cfg).inference_prep
    dtype = resolve_precision(device, "auto")
    options = RunOptions(device, dtype, 16, True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mr.nii.gz"
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        write_volume(Volume(rng.normal(100, 30, (256, 256, slices)).astype(np.float32), affine), src)

        def end_to_end():
            write_volume(predict_volume(G, read_volume(src), prep, options=options), Path(tmp) / "sct.nii.gz")

        xs = torch.rand(slices, 1, 256, 256).contiguous(memory_format=torch.channels_last)

        def bare():
            with torch.inference_mode(), autocast(device, dtype), reuse_freed_memory():  # as predict_volume's loop
                for i in range(0, slices, 16):
                    G(xs[i : i + 16].to(device)).float().cpu()

        end_to_end(), bare()
        t_e2e, t_bare = [], []
        for _ in range(rounds):
            t_e2e.append(timed(end_to_end, 1, device))
            t_bare.append(timed(bare, 1, device))
    e2e, fwd = slices / float(np.median(t_e2e)), slices / float(np.median(t_bare))
    return {"slices": slices, "end_to_end_img_s": e2e, "bare_forward_img_s": fwd, "fraction_of_bare": e2e / fwd}


def bench_memory(shape: tuple[int, int, int]) -> dict:
    """Peak RSS of `medp2p predict` on a ``shape`` volume (a child process, measured by the OS)."""
    from medp2p.infer import save_checkpoint
    from medp2p.io import write_volume
    from medp2p.plan import build_plan
    from medp2p.types import Volume

    cfg = medp2p_config()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        G = build_plan(cfg).build_generator()
        save_checkpoint({"generator": G.state_dict(), "config": cfg.to_dict(), "step": 0}, tmp / "model.pt")
        rng = np.random.default_rng(0)
        write_volume(Volume(rng.normal(100, 30, shape).astype(np.float32), np.diag([0.5, 0.5, 1.0, 1.0])), tmp / "big.nii.gz")
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "medp2p",
                "predict",
                "--model",
                str(tmp / "model.pt"),
                "-i",
                str(tmp / "big.nii.gz"),
                "-o",
                str(tmp / "out"),
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: this is the only one
    return {"shape": list(shape), "peak_rss_gib": peak_kib / 2**20, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["train", "infer", "volume", "memory"], nargs="*")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="Frozen-weight torch.compile for generator inference."
    )
    parser.add_argument(
        "--train-compile", action="store_true", help="medp2p's training step with train.compile (torch.compile of G and D)."
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="medp2p keeps the C library's malloc defaults (MEDP2P_MALLOC=system), here and in the memory run's medp2p.",
    )
    args = parser.parse_args()
    from medp2p.device.precision import resolve_device, resolve_precision

    if args.system_malloc:
        os.environ[MALLOC_ENV] = "system"
    with reuse_freed_memory() as reuse:  # does this machine take it (glibc)?
        pass

    device = resolve_device(args.device)
    parts = args.only or ["train", "infer", "volume", "memory"]
    dtype = resolve_precision(device, "auto") or torch.float32
    out: dict = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "malloc": "medp2p reuses freed memory" if reuse else "system defaults",
    }
    peak = matmul_peak(device, dtype)
    out["matmul_peak_gflops"] = peak
    out["generator_peak_img_s"] = peak / 12.0  # 12 GFLOP per 256x256 unet_256 forward
    out["train_peak_img_s"] = peak / 86.0  # 86 GFLOP per pix2pix training step and image
    print(f"device {device}, {out['threads']} threads, {dtype}, malloc {out['malloc']}: matmul peak {peak:.0f} GFLOP/s", flush=True)
    if "train" in parts:
        r = out["train"] = bench_train(device, args.train_batch, args.rounds, 3 if device.type == "cpu" else 20, args.train_compile)
        r["fraction_of_peak"] = r["medp2p_img_s"] / out["train_peak_img_s"]
        print(
            f"train  batch {r['batch']}{' compiled' if r['compiled'] else ''}: reference {r['reference_img_s']:.2f} img/s, "
            f"medp2p {r['medp2p_img_s']:.2f} img/s, "
            f"ratio {r['ratio']:.2f}x, {100 * r['fraction_of_peak']:.0f}% of the {out['train_peak_img_s']:.1f} img/s ceiling",
            flush=True,
        )
    if "infer" in parts:
        r = out["infer"] = bench_infer(device, args.rounds, 16 if device.type == "cpu" else 200, args.compile)
        r["fraction_of_peak"] = r["medp2p_generator_img_s"] / out["generator_peak_img_s"]
        print(
            f"infer  generator: reference {r['reference_img_s']:.1f} img/s, medp2p {r['medp2p_generator_img_s']:.1f} img/s, "
            f"ratio {r['ratio']:.2f}x, {100 * r['fraction_of_peak']:.0f}% of the {out['generator_peak_img_s']:.0f} img/s peak",
            flush=True,
        )
    if "volume" in parts:
        r = out["volume"] = bench_volume(device, 64, args.rounds)
        if "infer" in out:
            r["ratio_to_reference"] = r["end_to_end_img_s"] / out["infer"]["reference_img_s"]
        print(
            f"volume {r['slices']} slices 256x256: end to end {r['end_to_end_img_s']:.1f} img/s, "
            f"bare forward {r['bare_forward_img_s']:.1f} img/s "
            f"({100 * r['fraction_of_bare']:.0f}%)"
            + (f", {r['ratio_to_reference']:.2f}x the reference" if "ratio_to_reference" in r else ""),
            flush=True,
        )
    if "memory" in parts:
        r = out["memory"] = bench_memory((512, 512, 300))
        print(f"memory predict 512x512x300: peak RSS {r['peak_rss_gib']:.2f} GiB ({r['wall_s']:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
