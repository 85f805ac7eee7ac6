import pytest
import torch

from core import precision
from core.precision import autocast, inference_autocast, resolve_precision

CPU = torch.device("cpu")


def _cpu_bf16(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"),
                         [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_follows_cpu_support(monkeypatch, amx, avx512_bf16, expected):
    _cpu_bf16(monkeypatch, amx, avx512_bf16)
    assert resolve_precision("auto", CPU) == expected


def test_auto_precision_without_cpu_checks(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not precision.cpu_has_fast_bf16()
    assert resolve_precision("auto", CPU) == "fp32"


def test_explicit_precision_kept(monkeypatch):
    _cpu_bf16(monkeypatch, False, False)
    assert resolve_precision("bf16", CPU) == "bf16"
    _cpu_bf16(monkeypatch, True, True)
    assert resolve_precision("fp32", CPU) == "fp32"


def test_unknown_precision_rejected():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of auto, bf16, fp32"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_output_dtype(name, dtype):
    layer = torch.nn.Linear(4, 3)
    with autocast(CPU, name):
        assert layer(torch.ones(2, 4)).dtype == dtype


def test_inference_float32_on_bf16_cpu(monkeypatch):
    _cpu_bf16(monkeypatch, True, True)
    layer = torch.nn.Linear(4, 3)
    with inference_autocast(CPU):
        assert layer(torch.ones(2, 4)).dtype == torch.float32
