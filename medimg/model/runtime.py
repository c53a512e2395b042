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
import tempfile

# absl's own line format: severity letter, MMDD, time (seconds unbounded before absl is set up), thread id,
# file:line]. Informational lines go, and the start-up error that only says there is no GPU; every other warning or
# error is kept.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*"
    r"|E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit.*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$"
)


def start_tensorflow() -> None:
    """Import TensorFlow and Keras and list the devices (where the no-GPU errors are written), with their start-up
    lines filtered out of standard error (`START_UP_NOISE`); anything else they write is passed on. A no-op once
    TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if line.strip() and not START_UP_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
