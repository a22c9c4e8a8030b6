"""Where and how the model runs: device, precision policy and torch thread count."""
import logging
import os

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(gpu_id) -> torch.device:
    """CUDA when TorchServe assigned this worker a GPU and CUDA works, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def cpu_has_fast_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo_path) as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """The CPU model and the flags that decide which kernels are fast: what every measurement is labelled with."""
    import platform

    model, flags = platform.processor() or "unknown", set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cores": usable_cores()}


def resolve_precision(requested: str, device: torch.device, fast_bf16: bool | None = None) -> str:
    """`auto` means fp16 on CUDA and fp32 on the CPU: a reduced CPU precision is what `tskit optimize` picks
    for an archive after measuring it against the accuracy guard, never a guess from a CPU flag.

    An explicit request is honoured where it is fast: fp16 on the CPU (no fast kernels) and bf16 on a CPU
    without native bf16 (10x slower there, measured) fall back to fp32 with a warning, so an archive tuned
    on one machine keeps its accuracy on another.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if device.type == "cpu":
        if requested == "fp16":
            logger.warning("precision fp16 asked for on the CPU; using fp32 (fp16 has no fast CPU kernels)")
            return "fp32"
        if requested == "bf16" and not (cpu_has_fast_bf16() if fast_bf16 is None else fast_bf16):
            logger.warning("precision bf16 asked for, but this CPU has no native bf16 (avx512_bf16/amx_bf16); "
                           "using fp32")
            return "fp32"
    return requested


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch intra-op threads so that workers x threads never exceeds the cores (oversubscription
    made stock TorchServe 7x slower on 2 cores)."""
    cores = cores or usable_cores()
    return max(1, cores // max(1, workers))


def configured_threads(explicit: int, workers: int) -> int:
    """The handler's `threads` if set, else the operator's OMP_NUM_THREADS (TorchServe workers inherit the
    server's environment, and the archive cannot know how many workers a server runs), else cores // workers."""
    if explicit:
        return explicit
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else threads_per_worker(workers)


def set_torch_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before the first parallel op; harmless if already set
        pass
