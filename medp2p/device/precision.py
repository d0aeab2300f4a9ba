"""Device and mixed-precision choices: CPU or CUDA, bfloat16 autocast where the hardware has it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: Device names a command accepts.
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
#: Precision names: ``fp32`` is true float32 (no TF32 on CUDA), ``tf32`` float32 with TF32 matmuls
#: and convolutions on Ampere and newer, ``bf16``/``fp16`` autocast, ``auto`` the best native one.
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda:N`` one GPU, checked against those present.

    Example:
        >>> resolve_device("auto")
        device(type='cpu')
    """
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        if name == "cuda":
            return torch.device("cuda")
        index = name.split(":", 1)[1]
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", int(index))
    raise ValueError(f"device must be {DEVICE_HELP}, got {name!r}")


def cpu_has_bf16() -> bool:
    """True when the CPU runs bfloat16 matrix work natively (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when the GPU computes bfloat16 natively (compute capability 8.0, Ampere, and newer).

    ``torch.cuda.is_bf16_supported()`` alone also counts emulation (pre-Ampere GPUs run bf16 through
    float32 paths, slower than float16).
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the argument
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for float32 (``fp32``, ``tf32``).

    ``auto``: bfloat16 on GPUs that compute it natively, else float16 (with a GradScaler in
    training); bfloat16 on CPUs with native bf16 units; float32 otherwise.

    Example:
        >>> resolve_precision(torch.device("cpu"), "fp32") is None
        True
    """
    if precision in ("fp32", "tf32"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def configure_backends(device: torch.device, precision: str, deterministic: bool = False, fixed_shapes: bool = True) -> dict[str, object]:
    """Set the process-wide CUDA backend switches a run's config asks for; returns what was set.

    TF32: off for ``fp32`` (true float32, as the reference computes), on for ``tf32`` and for the
    float32 parts of autocast runs. ``cudnn.benchmark``: on for fixed-size training crops (it picks
    the fastest convolution once per shape), off when ``deterministic``. ``deterministic``: torch's
    deterministic algorithms and cuBLAS's fixed workspace, for bitwise-repeatable GPU runs. On a
    CPU nothing changes but the deterministic flag.
    """
    import os

    settings: dict[str, object] = {"deterministic": deterministic}
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = fixed_shapes and not deterministic
        settings.update(tf32=tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    return settings


def memory_format(
    device: torch.device, dtype: torch.dtype | None, channels_last: bool | str = "auto", training: bool = False, dims: int = 2
) -> torch.memory_format:
    """The activation layout: ``channels_last`` (NHWC) or contiguous (NCHW).

    3D networks (``dims=3``) always run contiguous (NCDHW): their layout was not measured.

    An explicit True/False is kept. ``auto``: NHWC for prediction, and for training on CUDA or
    under autocast; NCHW for float32 training on a CPU, where oneDNN's NHWC backward passes were
    slower (the pix2pix step at batch 4 on a 2-core AVX2 CPU: 1.09 and 1.13 against 1.01 and
    1.04 images/s; prediction is faster in NHWC there: docs/results.md).

    Example:
        >>> memory_format(torch.device("cpu"), None, "auto", training=True)
        torch.contiguous_format
    """
    if dims == 3:
        return torch.contiguous_format
    if channels_last == "auto":
        channels_last = not training or device.type == "cuda" or dtype is not None
    elif not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be auto, true or false, got {channels_last!r}")
    return torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype``, or nothing for float32."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def compile_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with frozen weights, for prediction only.

    Inductor's freezing (``torch._inductor.config.freezing``, a process-wide setting) folds the
    weights into the graph as constants and packs them once for oneDNN / cuDNN, removing the
    per-call weight reordering that costs fp32 batch-1 inference about half its time, and fuses
    normalisation and activations into the convolutions. Compiling takes a minute or more on a
    CPU, so it pays over many slices or volumes; the first batch of each new shape compiles.

    Example:
        >>> fast = compile_for_inference(generator)
        >>> with torch.inference_mode():
        ...     y = fast(x)
    """
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled: torch.nn.Module = torch.compile(net.eval())  # type: ignore[assignment]  # an OptimizedModule
    return compiled


def resolved_settings(
    device: torch.device, dtype: torch.dtype | None, layout: torch.memory_format, world_size: int = 1
) -> dict[str, object]:
    """What ``auto`` resolved to and what the machine offers, for ``run.json`` (two runs compare by it).

    Example:
        >>> resolved_settings(torch.device("cpu"), None, torch.contiguous_format)["precision"]
        'fp32'
    """
    names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    out: dict[str, object] = {
        "device": str(device),
        "precision": names.get(dtype, str(dtype)),
        "memory_format": "channels_last" if layout == torch.channels_last else "contiguous",
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_has_bf16(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        out["cuda_device"] = torch.cuda.get_device_name(index)
        out["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
        out["cuda"] = torch.version.cuda
    return out
