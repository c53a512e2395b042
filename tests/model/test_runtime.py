"""TensorFlow starts without its C++ start-up lines on a user's terminal; every other line still gets through."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medimg.model.runtime import is_noise

# Lines TensorFlow 2.21 wrote on this machine (2 cores, no GPU) at import and at its first operation.
SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796007425.129131   20240 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796007425.129495   20240 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796007428.318564   20240 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]


def test_start_up_lines_are_noise_and_real_warnings_are_not() -> None:
    assert all(is_noise(line, gpu_driver=False) for line in SEEN)
    assert not is_noise(SEEN[-1], gpu_driver=True)  # with an NVIDIA driver, cuInit failing is a real error
    kept = [
        "W0000 00:00:1796007428.318564   20240 op_level_cost_estimator.cc:699] Error in PredictCost() for the op",
        "E0000 00:00:1796007428.318564   20240 some_kernel.cc:12] out of memory",
        "UserWarning: Skipping variable loading for optimizer 'adam'",
        "Traceback (most recent call last):",
    ]
    assert not any(is_noise(line, gpu_driver=False) for line in kept)


@pytest.mark.slow
def test_starting_tensorflow_writes_only_what_is_not_start_up_noise() -> None:
    script = (
        "import sys\n"
        "from medimg.model.runtime import start_tensorflow\n"
        "start_tensorflow()\n"
        "import tensorflow as tf\n"
        "tf.constant(1)\n"
        "print('after the start', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "after the start"  # the descriptor is back: later lines are written as they are
    assert not [line for line in lines if is_noise(line)]
    unfiltered = subprocess.run(
        [sys.executable, "-c", script.replace("start_tensorflow()", "pass")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert [line for line in unfiltered.stderr.splitlines() if is_noise(line)]  # what the filter took away
