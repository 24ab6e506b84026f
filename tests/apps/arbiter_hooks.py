"""Hooks for the arbiter tests: each appends a line to $CORSAC_TEST_HOOKS."""
import os


def _note(line):
    with open(os.environ["CORSAC_TEST_HOOKS"], "a") as f:
        f.write(line + "\n")


def on_starting():
    _note(f"on_starting {os.getpid()}")


def post_fork(worker):
    _note(f"post_fork {worker.id} {worker.pid} {worker.arbiter_pid}")


def worker_exit(worker):
    _note(f"worker_exit {worker.id} {os.getpid()}")


def failing(worker=None):
    raise RuntimeError("hook says no")
