"""TensorFlow's start, without its start-up chatter on a user's terminal.

TensorFlow ≥ 2.19 writes its C++ start-up lines (absl's "All log messages before absl::InitializeLog()" preamble,
the oneDNN notice, "Could not find cuda drivers", the CPU-instruction note, "failed call to cuInit" on a machine
without a GPU) to standard error before it reads TF_CPP_MIN_LOG_LEVEL, so the variable no longer silences them
(tensorflow/tensorflow#100442). The CLI starts TensorFlow here, once, with standard error caught at the file
descriptor, and passes on every line that is not one of those.
"""

from __future__ import annotations

import os
import re
import sys
import threading

# absl's own line format: severity letter, MMDD, time (seconds unbounded before absl is set up), thread id,
# file:line]. Informational lines go; every warning and error is kept, except "failed call to cuInit" on a machine
# without an NVIDIA driver (`NO_GPU_NOISE`), where it only says there is no GPU.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$"
)
NO_GPU_NOISE = re.compile(r"^E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit.*$")
NVIDIA_DRIVER = "/proc/driver/nvidia"  # present when the NVIDIA kernel driver is loaded (Linux)


def is_noise(line: str, gpu_driver: bool | None = None) -> bool:
    """Whether a line TensorFlow writes while starting says nothing a user needs (`START_UP_NOISE`, and the
    cuInit error without a GPU driver)."""
    if START_UP_NOISE.match(line):
        return True
    driver = os.path.exists(NVIDIA_DRIVER) if gpu_driver is None else gpu_driver
    return not driver and bool(NO_GPU_NOISE.match(line))


def start_tensorflow() -> None:
    """Import TensorFlow and Keras and list the devices (where the no-GPU error is written), with their start-up
    lines filtered out of standard error as they arrive (a pipe read by a thread, so a crash during the import still
    shows what was written before it); every other line is passed on.

    Not filtered when the user set TF_CPP_MIN_LOG_LEVEL below 3 (they asked for TensorFlow's messages), or when
    standard error is not a file descriptor this process can redirect. A no-op once TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        return
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") != "3" or sys.stderr is None:
        _import()
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError):
        _import()
        return
    driver = os.path.exists(NVIDIA_DRIVER)

    def forward() -> None:
        # The reader owns `saved` and closes it at the pipe's end; a line it cannot write is dropped, but the pipe
        # is always drained, so TensorFlow never blocks on a full pipe.
        with os.fdopen(read_end, "rb") as lines:
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.strip() and not is_noise(line.rstrip("\n"), driver):
                    try:
                        os.write(saved, raw)
                    except OSError:
                        pass
        os.close(saved)

    restored = os.dup(saved)
    reader = threading.Thread(target=forward, name="tensorflow-start-up-lines", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        _import()
    finally:
        sys.stderr.flush()
        os.dup2(restored, 2)  # the pipe's last writer closes: the reader sees its end
        os.close(restored)
        reader.join(timeout=5)


def _import() -> None:
    import keras  # noqa: F401
    import tensorflow as tf

    tf.config.list_physical_devices()
