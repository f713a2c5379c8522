"""--precision auto: bfloat16_matmul where /proc/cpuinfo shows native bfloat16 and oneDNN is on; --xla auto."""
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


@pytest.mark.parametrize("native,onednn,expected", [(True, True, "bfloat16_matmul"), (True, False, "float32"),
                                                     (False, True, "float32")])
def test_auto_resolves_by_the_cpu_and_onednn_and_explicit_precisions_stay(monkeypatch, native: bool, onednn: bool,
                                                                          expected: str) -> None:
    monkeypatch.setattr(trainer, "cpu_has_native_bfloat16", lambda: native)
    monkeypatch.setattr(trainer, "onednn_enabled", lambda: onednn)
    assert trainer.resolve_precision("auto") == expected
    for precision in ("float32", "mixed_bfloat16", "bfloat16_matmul"):
        assert trainer.resolve_precision(precision) == precision


def test_auto_is_the_default() -> None:
    from modules.config import TrainingConfig

    assert TrainingConfig().precision == "auto"
    assert TrainingConfig(precision="float32").precision == "float32"


@pytest.mark.parametrize("xla,precision,replicas,adapter_drop,steps,expected", [
    ("auto", "mixed_bfloat16", 1, 0, 10, True),      # where whole runs measured it faster
    ("auto", "bfloat16_matmul", 1, 0, 1150, True),   # 10 MRPC epochs: compiling pays back
    ("auto", "bfloat16_matmul", 1, 0, 345, False),   # 3 MRPC epochs: it does not
    ("auto", "float32", 1, 0, 1150, False),
    ("auto", "mixed_bfloat16", 2, 0, 1150, False),   # no XLA across workers
    ("auto", "bfloat16_matmul", 2, 0, 1150, False),
    ("auto", "mixed_bfloat16", 1, 2, 1150, False),   # the prefix cache's batches have a shape per length
    ("on", "float32", 1, 0, 10, True),
    ("off", "mixed_bfloat16", 1, 0, 1150, False),
])
def test_xla_auto_compiles_bfloat16_training_on_one_replica_where_it_pays_back(xla, precision, replicas, adapter_drop,
                                                                              steps, expected) -> None:
    from types import SimpleNamespace

    from modules.config import TrainingConfig

    config = TrainingConfig(xla=xla, adapter_drop=adapter_drop)
    strategy = SimpleNamespace(num_replicas_in_sync=replicas)
    assert trainer.resolve_xla(config, precision, strategy, steps) is expected


def test_unknown_xla_mode_is_refused_naming_the_flag() -> None:
    from modules.config import TrainingConfig

    with pytest.raises(ValueError, match="--xla must be one of auto, on, off"):
        TrainingConfig(xla="yes")
