"""biaslens from Python: measure, trace, edit and evaluate gender bias in small language models.

A thin layer over the biaslens Rust library and its command line: every call runs the job the
matching ``biaslens`` subcommand runs, with the same defaults, checks and error messages.

    >>> import biaslens
    >>> m = biaslens.load("smollm2-135m")
    >>> r = m.measure(split="controls")
    >>> r.metrics["a_f"]["value"]

See docs/python.md in the repository.
"""

import os as _os

# As the `biaslens` binary does: an error is one line, without the backtrace candle would
# capture when RUST_BACKTRACE is set (RUST_LIB_BACKTRACE=1 brings it back).
_os.environ.setdefault("RUST_LIB_BACKTRACE", "0")

from ._biaslens import (  # noqa: E402
    BiaslensError,
    MeasureResult,
    Model,
    TraceResult,
    __version__,
    cli_main,
    eval,
    load,
)

__all__ = [
    "BiaslensError",
    "MeasureResult",
    "Model",
    "TraceResult",
    "__version__",
    "cli_main",
    "eval",
    "load",
    "main",
]


def main(argv=None):
    """Run the ``biaslens`` command line (``python -m biaslens ...``); returns its exit code."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["biaslens", *args])
