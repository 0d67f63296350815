"""`envs.compiled_step.is_compile_failure` and `compile_failure` walk an error's ``inner_exception`` /
``__cause__`` chain; a chain that loops back on itself (``a.__cause__ = b; b.__cause__ = a``, which Python
allows) must end the walk, not spin forever inside the ``compile="auto"`` fallback of a user's step.

Each call runs in a daemon thread with a deadline, so a regression fails here instead of hanging the suite.
"""

import threading

import pytest

from envs.compiled_step import compile_failure, is_compile_failure


def _within(seconds: float, fn, *args):
    box: list = []
    worker = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{fn.__name__} did not return within {seconds} s on a looping error chain")
    return box[0]


def _loop() -> tuple[BaseException, BaseException]:
    a, b = ValueError("the user's error"), RuntimeError("raised while handling it")
    a.__cause__, b.__cause__ = b, a
    return a, b


def test_is_compile_failure_ends_on_a_looping_chain():
    a, _ = _loop()
    assert _within(10, is_compile_failure, a) is False


def test_compile_failure_ends_on_a_looping_chain_at_the_last_new_error():
    a, b = _loop()
    root, first = _within(10, compile_failure, a)
    assert root is b and first == "raised while handling it"


def test_a_plain_chain_still_reaches_its_root():
    inner = KeyError("k")
    outer = RuntimeError("wrapper")
    outer.__cause__ = inner
    assert compile_failure(outer)[0] is inner
    assert is_compile_failure(outer) is False
