"""--precision auto: mixed_bfloat16 only where /proc/cpuinfo shows native bfloat16 arithmetic."""
import pytest

from modules import trainer


@pytest.mark.parametrize("flags,native", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 amx_bf16 amx_tile amx_int8", True),
    ("fpu avx2 avx512f avx512_vnni", False),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert trainer.cpu_has_native_bfloat16(str(cpuinfo)) is native


def test_unreadable_cpuinfo_means_no_native_bfloat16(tmp_path) -> None:
    assert trainer.cpu_has_native_bfloat16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native,expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_resolves_by_the_cpu_and_explicit_precisions_stay(monkeypatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(trainer, "cpu_has_native_bfloat16", lambda: native)
    assert trainer.resolve_precision("auto") == expected
    assert trainer.resolve_precision("float32") == "float32"
    assert trainer.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_auto_is_accepted_and_float32_stays_the_default() -> None:
    from modules.config import TrainingConfig

    assert TrainingConfig().precision == "float32"
    assert TrainingConfig(precision="auto").precision == "auto"
