"""The choices devices.py makes for a device it may not have here: Apple's GPU (mps), whose choices follow PyTorch's
rules for it. mps is untested on real hardware: these tests check the decisions."""

import pytest
import torch

import devices
import train
from configurator import UsageError


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


@pytest.mark.parametrize("name, parsed", [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                          ("cuda:3", ("cuda", 3)), ("mps", ("mps", None)), ("cuda:", None),
                                          ("cuda:x", None), ("cpu:0", None), ("gpu", None)])
def test_a_device_name_is_parsed_in_one_place(name, parsed):
    assert devices.parse_device(name) == parsed
    if parsed is None:  # sample.py and export.py hand the setting to resolve_device without a check of their own
        with pytest.raises(UsageError, match=f"'device' must be auto, cpu, cuda, cuda:N or mps, got '{name}'"):
            devices.resolve_device(name)


def test_the_cpu_is_named_by_its_model():
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n"
    assert devices.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert devices.cpu_model("processor\t: 0\n").endswith("CPU")  # no model line: what platform knows
