"""Ctrl-C during training: the first one asks the run to stop at the end of its current chunk of
steps, after a checkpoint of that step (so nothing trained is lost and the same command
resumes); a second one stops at once."""
import contextlib
import signal
import threading

_requested = threading.Event()


def requested():
    return _requested.is_set()


@contextlib.contextmanager
def graceful(enabled=True):
    """Within it, SIGINT sets the request instead of raising KeyboardInterrupt (in the main thread
    of a one-process run; elsewhere nothing changes). The previous handler comes back after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()

    def ask_to_stop(signum, frame):
        _requested.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)     # a second Ctrl-C stops at once

    previous = signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
