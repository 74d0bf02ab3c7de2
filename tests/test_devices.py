"""The choices devices.py makes for a device it may not have here: peaks for MFU by GPU name, and Apple's GPU (mps),
whose choices follow PyTorch's rules for it. mps is untested on real hardware: these tests check the decisions."""

import pytest
import torch

import devices
import train
from configurator import UsageError


@pytest.mark.parametrize("name, dtype, tf32, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", True, (989e12, "H100 SXM dense bfloat16 989 TFLOP/s")),
    ("NVIDIA H100 PCIe", "bfloat16", True, (756e12, "H100 PCIe dense bfloat16 756 TFLOP/s")),
    ("NVIDIA H100 NVL", "float16", True, (835e12, "H100 NVL dense float16 835 TFLOP/s")),
    ("NVIDIA H200", "bfloat16", True, (989e12, "H200 SXM dense bfloat16 989 TFLOP/s")),
    ("NVIDIA A100-SXM4-80GB", "float32", True, (156e12, "A100 dense TF32 156 TFLOP/s")),
    ("NVIDIA A100 80GB PCIe", "float32", False, (19.5e12, "A100 FP32 19.5 TFLOP/s")),
    ("NVIDIA L4", "bfloat16", True, (121e12, "L4 dense bfloat16 121 TFLOP/s")),
    ("NVIDIA L40S", "bfloat16", True, (362e12, "L40S dense bfloat16 362 TFLOP/s")),
    ("NVIDIA GeForce RTX 4090", "bfloat16", True, (165e12, "RTX 4090 dense bfloat16 165 TFLOP/s")),
    ("Tesla T4", "float32", True, (8.1e12, "T4 FP32 8.1 TFLOP/s")),  # no TF32 on a T4
    ("NVIDIA L40", "bfloat16", True, None),  # not in the table: no guess from a near name
    ("NVIDIA A10G", "bfloat16", True, None),
    ("NVIDIA GH200 480GB", "bfloat16", True, None),
])
def test_the_peak_for_mfu_is_looked_up_by_the_gpu_name_and_the_arithmetic(name, dtype, tf32, expected):
    assert devices.gpu_peak_flops(name, dtype, tf32) == expected


@pytest.fixture
def apple_gpu(monkeypatch):
    """A machine as PyTorch sees a Mac with Apple silicon: no CUDA, an mps device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_picks_mps_on_apple_silicon_in_float32_without_compiling(apple_gpu):
    assert devices.resolve_device("auto") == "mps"
    assert devices.resolve_dtype("auto", "mps") == "float32"
    assert devices.resolve_compile("auto", "mps") is False


def test_bfloat16_on_mps_autocasts_where_pytorch_has_mps_autocast(apple_gpu, monkeypatch):
    assert devices.resolve_dtype("bfloat16", "mps") == "bfloat16"  # this PyTorch has autocast for mps
    autocast, scaler = devices.mixed_precision("mps", "bfloat16")
    assert isinstance(autocast, torch.autocast) and autocast.device == "mps" and autocast.fast_dtype == torch.bfloat16
    assert not scaler.is_enabled()  # a grad scaler is for float16 only
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "mps")
    with pytest.raises(UsageError, match="dtype 'bfloat16' on mps needs autocast for Apple's GPU"):
        devices.resolve_dtype("bfloat16", "mps")


def test_float16_on_mps_is_refused_as_pytorch_grad_scaler_is_for_cuda_and_cpu(apple_gpu):
    with pytest.raises(UsageError, match="dtype 'float16' needs a CUDA GPU .* on mps use --dtype=float32"):
        devices.resolve_dtype("float16", "mps")


def test_adamw_is_fused_where_pytorch_has_the_kernel(monkeypatch):
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    for device in ("cuda", "cuda:1", "cpu", "mps"):
        assert devices.fused_adamw_available(device) == (device.split(":")[0] in _get_fused_kernels_supported_devices())
    monkeypatch.delattr("torch.utils._foreach_utils._get_fused_kernels_supported_devices")
    assert devices.fused_adamw_available("cuda") and not devices.fused_adamw_available("mps")
    model, optimizer = train.build(train.TrainConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), 10, "cpu")
    assert optimizer.defaults["fused"] is False  # an older PyTorch: the plain AdamW on a CPU



@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 sha_ni\n", True),  # AMD Zen 4, Intel Cooper Lake
    ("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", True),  # Intel Sapphire Rapids
    ("flags\t\t: fpu avx2 avx512f avx512bw\n", False),  # AVX-512 without bf16: emulated, slower than float32
    ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm with bf16 (Graviton 3, Neoverse V1)
    ("Features\t: fp asimd\n", False),
    ("", False),
])
def test_bfloat16_matrix_units_are_read_from_the_cpu_flags(cpuinfo, expected):
    assert devices.cpu_has_bf16(cpuinfo) is expected
