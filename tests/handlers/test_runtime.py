import torch

from handlers.runtime import cpu_has_fast_bf16, resolve_precision, threads_per_worker

CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")


def test_auto_precision_is_fp32_on_the_cpu_whatever_its_flags():
    """A reduced CPU precision is chosen by `tskit optimize` under the accuracy guard, not from a flag."""
    assert resolve_precision("auto", CUDA, fast_bf16=False) == "fp16"
    assert resolve_precision("auto", CPU, fast_bf16=True) == "fp32"
    assert resolve_precision("auto", CPU, fast_bf16=False) == "fp32"


def test_explicit_precision_is_honoured_where_it_is_fast(caplog):
    assert resolve_precision("bf16", CPU, fast_bf16=True) == "bf16"
    assert resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_precision("fp16", CPU) == "fp32"
    # an archive tuned for bf16 on a CPU without it: fp32, and the model log says so
    assert resolve_precision("bf16", CPU, fast_bf16=False) == "fp32"
    assert "this CPU has no native bf16" in caplog.text


def test_unknown_precision_says_what_is_allowed():
    try:
        resolve_precision("int8", CPU)
    except ValueError as err:
        assert "auto, fp32, fp16, bf16" in str(err)
    else:
        raise AssertionError("int8 accepted")


def test_bf16_detection_reads_cpu_flags(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags : fpu avx2 avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor : 0\nflags : fpu avx avx2\n")
    assert cpu_has_fast_bf16(str(amx))
    assert not cpu_has_fast_bf16(str(plain))
    assert not cpu_has_fast_bf16(str(tmp_path / "missing"))


def test_workers_times_threads_never_exceed_cores():
    for cores in (1, 2, 4, 16):
        for workers in (1, 2, 3, 8, 32):
            threads = threads_per_worker(workers, cores)
            assert threads >= 1
            assert workers * threads <= max(cores, workers)
    assert threads_per_worker(1, 2) == 2
    assert threads_per_worker(2, 2) == 1
