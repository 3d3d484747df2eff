"""Where training and teacher inference run, and in which precision.

`training.device` (auto | cpu | cuda | mps) and `training.precision` (auto | fp32 | bf16 | fp16)
resolve to a `Runtime`: the device, the precision actually used, an autocast context and, for
fp16 on CUDA, a gradient scaler. auto picks cuda, then mps, then cpu; auto precision is bf16 on
a CUDA device that supports it and on a CPU that computes bf16 natively (`fast_cpu_bf16`), fp32
everywhere else. Weights stay float32 (autocast computes in low precision, the optimizer updates
float32 masters); what ran is recorded in the stage manifests.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from distill.config import ConfigError, TrainingConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ConfigError):
    """A device or precision this machine cannot provide; the message names the config key."""


def available(device_type: str) -> bool:
    """Whether torch can use this kind of device here."""
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        return torch.backends.mps.is_available()
    return False


def bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device_type in ("cpu", "mps")


# torch's probes of the CPU's bf16 units (private, hence looked up with a default).
CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def fast_cpu_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: it has bf16 units (AVX512-BF16 or AMX) and torch
    runs its AVX-512 kernels. Measured (`bench/precision.py`, docs/benchmarks.md): on an AMD EPYC
    with AVX512-BF16 a student step took 0.70x the fp32 time (interval 0.60-0.80) at the same
    validation accuracy; on an AVX2-only CPU bf16 is emulated and took 17x. Under
    ATEN_CPU_CAPABILITY=avx2 torch runs its AVX2 kernels, so this says no there too."""
    units = any(getattr(torch.cpu, probe, lambda: False)() for probe in CPU_BF16_PROBES)
    return units and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16": what is actually used

    @property
    def device_name(self) -> str:
        return self.device.type

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for the forward pass (and the loss); nothing at fp32."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None


CPU = Runtime(torch.device("cpu"), "fp32")


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available(kind)))
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"config key '{key}': unknown device {name!r} (auto|cpu|cuda|mps)")
    if not available(name):
        raise DeviceError(f"config key '{key}': device {name!r} is not available on this machine")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, key: str = "training.precision") -> str:
    kind = device.type
    if name == "auto":
        if kind == "cpu":
            return "bf16" if fast_cpu_bf16() else "fp32"
        return "bf16" if kind == "cuda" and bf16_supported(kind) else "fp32"
    if name == "fp32":
        return name
    if name == "bf16" and not bf16_supported(kind):
        raise DeviceError(f"config key '{key}': bf16 is not supported on device {kind!r}")
    if name == "fp16" and kind != "cuda":
        # Loss scaling (GradScaler) is what makes fp16 training safe; it is CUDA's.
        raise DeviceError(f"config key '{key}': fp16 needs a cuda device, not {kind!r}")
    if name not in DTYPES:
        raise DeviceError(f"config key '{key}': unknown precision {name!r} (auto|fp32|bf16|fp16)")
    return name


def resolve_runtime(settings: TrainingConfig, section: str = "training") -> Runtime:
    """The device and precision a training section asks for, checked against this machine.

    `section` is the config path of the settings (e.g. "student.training"), for error messages.
    """
    device = resolve_device(settings.device, f"{section}.device")
    return Runtime(device, resolve_precision(settings.precision, device, f"{section}.precision"))


def move_batch(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device`; `index` stays on the CPU (it selects rows of numpy
    arrays such as the cached teacher targets)."""
    if device.type == "cpu":
        return dict(batch)
    return {
        name: value if name == "index" else value.to(device, non_blocking=True)
        for name, value in batch.items()
    }
