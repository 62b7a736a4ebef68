"""A background thread that runs one inference request at a time, for asynchronous control.

The control loop submits a request when the worker is idle and polls for the result without blocking. ``cancel()``
(used by ``Controller.reset``) bumps an epoch so that a result computed for a previous episode is dropped, never
delivered. An exception raised by the inference function is re-raised in the control thread at the next
``poll``/``wait``, so a failing policy stops the loop instead of silently starving it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class InferenceWorker:
    """Runs ``fn(request) -> result`` in a daemon thread; at most one request in flight."""

    def __init__(self, fn: Callable[[Any], Any], name: str = "diffpolicy-inference"):
        self.fn = fn
        self._cv = threading.Condition()
        self._request: tuple[int, Any] | None = None
        self._result: tuple[int, Any, BaseException | None] | None = None
        self._epoch = 0
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True from ``submit`` until its result has been collected (or cancelled)."""
        with self._cv:
            return self._busy

    def submit(self, request: Any) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("InferenceWorker.submit after close()")
            if self._busy:
                raise RuntimeError("InferenceWorker.submit while a request is in flight; poll() or wait() first")
            self._busy, self._request = True, (self._epoch, request)
            self._cv.notify_all()

    def poll(self) -> Any | None:
        """The finished result of the current epoch, or None if there is none yet (never blocks)."""
        with self._cv:
            return self._take()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the in-flight request finishes; returns its result."""
        with self._cv:
            if not self._busy:
                raise RuntimeError("InferenceWorker.wait with no request in flight")
            if not self._cv.wait_for(lambda: self._result is not None and self._result[0] == self._epoch,
                                     timeout=timeout):
                raise TimeoutError(f"inference did not finish within {timeout} s")
            return self._take()

    def cancel(self) -> None:
        """Forget the in-flight request: its result, when it comes, is dropped."""
        with self._cv:
            self._epoch += 1
            self._busy, self._request, self._result = False, None, None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5.0)

    def _take(self) -> Any | None:
        if self._result is None or self._result[0] != self._epoch:
            return None
        _, result, error = self._result
        self._result, self._busy = None, False
        if error is not None:
            raise RuntimeError(f"inference failed in the background thread: {error!r}") from error
        return result

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._request is not None or self._closed)
                if self._closed:
                    return
                epoch, request = self._request
                self._request = None
            try:
                result, error = self.fn(request), None
            except BaseException as e:  # delivered to the control thread, which re-raises it
                result, error = None, e
            with self._cv:
                if epoch == self._epoch:
                    self._result = (epoch, result, error)
                    self._cv.notify_all()
