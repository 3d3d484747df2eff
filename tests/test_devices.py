"""Device and precision resolution (distill.devices), checked with the hardware that exists and
with the accelerator probe overridden to stand for machines that have one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import devices
from distill.config import ConfigError, TrainingConfig
from distill.devices import CPU, DeviceError, Runtime, move_batch, resolve_runtime


def machine(monkeypatch, *present: str, bf16: bool = True, cpu_bf16: bool = False) -> None:
    """Pretend these accelerators are present (the CPU always is), and whether the CPU computes
    bf16 natively."""
    monkeypatch.setattr(devices, "available", lambda kind: kind == "cpu" or kind in present)
    monkeypatch.setattr(devices, "fast_cpu_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(
        devices, "bf16_supported", lambda kind: kind in ("cpu", "mps") or (kind == "cuda" and bf16)
    )


def test_defaults_are_auto_and_resolve_to_cpu_fp32_without_an_accelerator(monkeypatch):
    machine(monkeypatch)
    settings = TrainingConfig()
    assert (settings.device, settings.precision) == ("auto", "auto")
    assert resolve_runtime(settings) == CPU


@pytest.mark.parametrize(
    ("present", "bf16", "expected"),
    [
        (("cuda", "mps"), True, ("cuda", "bf16")),
        (("cuda",), False, ("cuda", "fp32")),
        (("mps",), True, ("mps", "fp32")),
        ((), True, ("cpu", "fp32")),
    ],
)
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, present, bf16, expected):
    machine(monkeypatch, *present, bf16=bf16)
    runtime = resolve_runtime(TrainingConfig())
    assert (runtime.device.type, runtime.precision) == expected


def test_auto_is_bf16_on_a_cpu_that_computes_it_natively(monkeypatch):
    machine(monkeypatch, cpu_bf16=True)
    assert resolve_runtime(TrainingConfig()) == Runtime(torch.device("cpu"), "bf16")
    assert resolve_runtime(TrainingConfig(precision="fp32")) == CPU  # asked for, always honoured


@pytest.mark.parametrize(
    ("units", "capability", "fast"),
    [
        ({"_is_avx512_bf16_supported"}, "AVX512", True),
        ({"_is_amx_tile_supported", "_is_avx512_bf16_supported"}, "AVX512", True),
        (set(), "AVX512", False),  # AVX-512 without bf16 units: emulated
        ({"_is_avx512_bf16_supported"}, "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2
    ],
)
def test_a_cpu_computes_bf16_natively_with_its_units_and_avx512_kernels(
    monkeypatch, units, capability, fast
):
    for probe in devices.CPU_BF16_PROBES:
        monkeypatch.setattr(torch.cpu, probe, lambda probe=probe: probe in units, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert devices.fast_cpu_bf16() is fast


def test_an_absent_device_is_an_error_naming_the_key(monkeypatch):
    machine(monkeypatch)
    with pytest.raises(DeviceError, match="'student.training.device'.*'cuda' is not available"):
        resolve_runtime(TrainingConfig(device="cuda"), "student.training")
    assert issubclass(DeviceError, ConfigError)  # the CLI reports it as a config problem


def test_the_real_machine_resolves_explicit_cpu():
    assert resolve_runtime(TrainingConfig(device="cpu", precision="fp32")) == CPU
    runtime = resolve_runtime(TrainingConfig(device="cpu", precision="bf16"))
    assert runtime == Runtime(torch.device("cpu"), "bf16")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="teacher.training.device"):
            resolve_runtime(TrainingConfig(device="cuda"), "teacher.training")


@pytest.mark.parametrize(
    ("present", "device", "precision", "message"),
    [
        ((), "cpu", "fp16", "'training.precision': fp16 needs a cuda device"),
        (("cuda",), "cuda", "bf16", "'training.precision': bf16 is not supported"),
    ],
)
def test_an_unsupported_precision_is_an_error_naming_the_key(
    monkeypatch, present, device, precision, message
):
    machine(monkeypatch, *present, bf16=False)
    with pytest.raises(DeviceError, match=message):
        resolve_runtime(TrainingConfig(device=device, precision=precision))


def test_fp32_has_no_autocast_and_no_scaler():
    assert CPU.grad_scaler() is None
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_autocasts_matmuls_on_the_cpu():
    runtime = Runtime(torch.device("cpu"), "bf16")
    assert runtime.grad_scaler() is None
    with runtime.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_move_batch_keeps_the_row_index_on_the_cpu():
    batch = {"index": torch.arange(3), "input_ids": torch.ones(3, 4, dtype=torch.long)}
    moved = move_batch(batch, torch.device("cpu"))
    assert moved["index"] is batch["index"] and moved["input_ids"] is batch["input_ids"]
    moved["index"].numpy()  # usable to select rows of numpy arrays
    assert np.array_equal(moved["index"].numpy(), np.arange(3))


def token_rows(rows: int = 24):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, rows)
    ids = [[101, *rng.integers(1000, 2000, size=int(n)).tolist(), 102] for n in lengths]
    labels = rng.integers(0, 2, rows).tolist()
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], "label": labels}
    )


def test_teacher_targets_computed_in_bf16_are_stored_as_float32(tiny_classifier):
    from distill.batching import sorted_batches
    from distill.shards import label_batches

    rows = token_rows()
    batches = sorted_batches([len(ids) for ids in rows["input_ids"]], 8)
    full = label_batches(tiny_classifier, rows, batches)
    half = label_batches(tiny_classifier, rows, batches, Runtime(torch.device("cpu"), "bf16"))
    assert half.logits.dtype == np.float32 and half.cls_states.dtype == np.float16
    assert half.logits.shape == full.logits.shape and half.cls_states.shape == (24, 4, 32)
    assert not np.array_equal(half.logits, full.logits)  # bf16 was really used ...
    np.testing.assert_allclose(half.logits, full.logits, atol=0.1)  # ... and is close


def test_training_in_bf16_reports_it_and_keeps_float32_weights(tiny_classifier):
    from distill.teacher import teacher_loss
    from distill.training import train_classifier

    rows = token_rows()
    settings = TrainingConfig(epochs=1, batch_size=8, device="cpu", precision="bf16")
    result = train_classifier(tiny_classifier, rows, rows, settings, teacher_loss)
    assert (result.device, result.precision) == ("cpu", "bf16")
    assert all(p.dtype == torch.float32 for p in tiny_classifier.parameters())
    assert all(torch.isfinite(p).all() for p in tiny_classifier.parameters())


def test_preflight_names_the_section_asking_for_an_absent_device(monkeypatch, tmp_path):
    from distill.config import load_config
    from distill.preflight import check_inputs
    from tests.conftest import TINY_CONFIG

    machine(monkeypatch)
    config = load_config(TINY_CONFIG, [f"workdir={tmp_path}", "student.training.device=mps"])
    with pytest.raises(DeviceError, match="'student.training.device': device 'mps'"):
        check_inputs(config)
    assert not any(tmp_path.iterdir())  # refused before any data was read or cached
