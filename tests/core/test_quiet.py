"""No library noise: what a ptrain command prints while it loads the libraries a run uses."""

import subprocess
import sys
from pathlib import Path

AVX512_BF16 = "avx512_bf16" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else "")


def stderr_of(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr


def test_loading_the_run_libraries_prints_nothing():
    # what a run imports, after the core's quieting (every command that loads a model calls it first)
    noise = stderr_of("from ptrain._quiet import quiet_libraries; quiet_libraries(); import transformers, bitsandbytes")
    assert noise.strip() == "", noise
    if AVX512_BF16:  # the control: on such CPUs bitsandbytes logs its kernel line without the quieting
        assert "Failed to load CPU gemm_4bit_forward" in stderr_of("import bitsandbytes")
