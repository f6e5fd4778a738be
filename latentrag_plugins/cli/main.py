"""Entry point of the ``latentrag`` command: builds the sub-command parsers and runs one.

Each sub-command lives in its own module ``latentrag_plugins.cli.cmd_<name>`` that defines
``add_parser(subparsers) -> argparse.ArgumentParser`` and sets ``func`` (``run(args) -> int``) as the
parser default. Command modules import heavy packages (torch, faiss) inside ``run`` only, so
``latentrag --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any

from .._version import __version__
from ..errors import LatentRAGError

# Sub-command name -> module under latentrag_plugins.cli. Missing modules are skipped.
COMMANDS: dict[str, str] = {
    "init": "cmd_init",
    "index": "cmd_index",
    "ask": "cmd_ask",
    "collect": "cmd_collect",
    "import-trajectories": "cmd_import_trajectories",
    "prepare": "cmd_prepare",
    "train": "cmd_train",
    "eval": "cmd_eval",
    "bench": "cmd_bench",
    "world": "cmd_world",
    "demo": "cmd_demo",
    "serve": "cmd_serve",
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="latentrag",
        description="LatentRAG: agentic RAG that reasons and retrieves in latent space.",
    )
    parser.add_argument("--version", action="version", version=f"latentrag {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show debug logs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(module):
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``latentrag`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.verbose:
        _quiet_hub_progress()
    previous = signal.getsignal(signal.SIGTERM)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:  # a termination cleans up as an interrupt does (partial writes removed)
        signal.signal(signal.SIGTERM, _terminate)
    stdout, sys.stdout = sys.stdout, _StdoutGuard(sys.stdout)  # type: ignore[assignment]
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed stdout shows here, not at exit
        return code
    except _StdoutClosed:  # stdout closed early (`| head`): nothing left to say
        with contextlib.suppress(OSError, ValueError):  # and no flush error at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
            os.close(devnull)
        return 0
    except (LatentRAGError, OSError, ValueError, ImportError, MemoryError) as exc:
        if args.verbose:
            raise
        flags = _flags(parser, args.command)
        print(f"latentrag {args.command}: error: {_one_line(exc, flags)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, _Terminated) else "interrupted", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        sys.stdout = stdout
        if on_main_thread and previous is not None:  # None: not set from Python
            signal.signal(signal.SIGTERM, previous)


class _StdoutClosed(Exception):
    """The reader of stdout went away (``BrokenPipeError`` while writing stdout)."""


class _StdoutGuard:
    """``sys.stdout`` for a command: a broken pipe on it, and only on it, is
    :class:`_StdoutClosed` (a broken pipe elsewhere stays an error)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError as exc:
            raise _StdoutClosed from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as exc:
            raise _StdoutClosed from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that ``finally`` blocks run."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """The command's options by destination (``n_think`` -> ``--n-think``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.option_strings[-1] for a in sub.choices[command]._actions if a.option_strings}


def _one_line(exc: BaseException, flags: dict[str, str]) -> str:
    """The error as one line: a validation error lists each field's problem and value, naming
    the field's command-line option where it has one (OSError: paths, disks; MemoryError: a size
    too large for this machine)."""
    from pydantic import ValidationError

    if isinstance(exc, MemoryError):
        return f"out of memory{f' ({exc})' if str(exc) else ''}: try smaller sizes"
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for e in exc.errors():
        field = ".".join(map(str, e["loc"])) or "value"
        if field in flags:
            field += f" ({flags[field]})"
        problems.append(f"{field}: {e['msg']} (got {e['input']!r})")
    return f"invalid {exc.title}: " + "; ".join(problems)


def _quiet_hub_progress() -> None:
    """Hide Hugging Face download/loading bars; our own progress bars stay."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
