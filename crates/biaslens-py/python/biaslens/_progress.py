"""How long calls show their progress: a tqdm bar per stage when tqdm is installed (``tqdm.auto``,
so notebooks get their widget), otherwise a ``biaslens: ...`` line on stderr at most every few
seconds. The Rust side calls ``line`` and ``step`` from the thread that made the call."""

import sys
import time


class Progress:
    def __init__(self, enabled=True, every_s=5.0):
        self.enabled = enabled
        self.every_s = every_s
        self._bar = None
        self._what = None
        self._last = 0.0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm

    def line(self, text):
        """A stage message (what the command prints on stderr)."""
        if not self.enabled:
            return
        self.close()
        print(f"biaslens: {text}", file=sys.stderr, flush=True)

    def step(self, what, done, total):
        """``done`` of ``total`` units of ``what`` are finished."""
        if not self.enabled:
            return
        if self._tqdm is not None:
            if self._bar is None or self._what != what:
                self.close()
                self._bar = self._tqdm(total=total, desc=what, unit="")
                self._what = what
            self._bar.total = total
            self._bar.update(max(0, done - self._bar.n))
            return
        now = time.monotonic()
        if what != self._what or done >= total or now - self._last >= self.every_s:
            self._what, self._last = what, now
            print(f"biaslens: {what} {done}/{total}", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._what = None
