"""Hardware choices, in one place: the device, precision and memory layout, malloc's behaviour, process groups.

Example:
    >>> from medp2p.device import resolve_device, resolve_precision
    >>> resolve_precision(resolve_device("cpu"), "fp32") is None
    True
"""

from medp2p.device.allocator import MALLOC_ENV, reuse_freed_memory
from medp2p.device.distributed import Dist, init_distributed, weights_digest
from medp2p.device.precision import (
    autocast,
    compile_for_inference,
    cpu_has_bf16,
    memory_format,
    resolve_device,
    resolve_precision,
    resolved_settings,
)

__all__ = [
    "MALLOC_ENV",
    "Dist",
    "autocast",
    "compile_for_inference",
    "cpu_has_bf16",
    "init_distributed",
    "memory_format",
    "resolve_device",
    "resolve_precision",
    "resolved_settings",
    "reuse_freed_memory",
    "weights_digest",
]
