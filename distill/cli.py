"""The `distill` command: a dispatcher over one module per command, `distill.commands.<name>`.

Each command module exposes `add_parser(sub)` (which sets `func=run`) and `run(args) -> int`. Commands check what
they can (config, inputs, output paths) before they load a model. Whatever stops a command from doing its job ends
as one line on stderr, `distill <command>: error: <cause>`, and one of the exit codes below; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

COMMANDS = ("sample", "train", "export", "eval", "gate", "demo", "compare", "plan")

OK, REGRESSION, FAILED, ABORTED, INTERRUPTED, TERMINATED = 0, 1, 2, 3, 130, 143
EXIT_CODES = f"""exit codes:
  {OK}    done
  {REGRESSION}    `distill gate` found a regression (only gate uses it)
  {FAILED}    the command could not do its job: bad arguments or config, a missing, incomplete or corrupt file,
       an output path that cannot be written, or any unexpected error
  {ABORTED}    `distill train` was stopped by its loss guard (the last good checkpoint is kept)
  {INTERRUPTED}  interrupted (Ctrl-C); a training run keeps its last checkpoint
  {TERMINATED}  terminated (SIGTERM, as a scheduler ends a job); a training run keeps its last checkpoint

Errors are one line on stderr: `distill COMMAND: error: CAUSE`. Add --debug (before or after COMMAND) for the
traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Few-step distillation of flow-matching video DiTs (any registered teacher family) and their evaluation.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"distill.commands.{name}").add_parser(sub)
        # accepted after the command too; SUPPRESS keeps a --debug given before it
        sub.choices[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show the traceback of an error")
    return parser


def _cause(err: BaseException) -> str:
    """The error as a user reads it: our own errors say it all; others get their type, which is often the clue."""
    from distill.core.config import ConfigError
    from distill.core.disk import DiskFull

    text = str(err).strip() or type(err).__name__
    if isinstance(err, (ConfigError, ValueError, DiskFull)):
        return text
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or text}"
    return f"{type(err).__name__}: {text}"


def _one_line_warnings(command: str) -> None:
    """Warnings (a prompt cut at the text encoder's length, say) as one line each, like errors."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"distill {command}: warning: {message}", file=file or sys.stderr)
    warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (partial checkpoint removed, lock released)."""


def _stop(signum, frame) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_stop_signals(handler) -> dict:
    """Set SIGINT and SIGTERM to `handler` (main thread only; a signal the caller ignores, as `nohup` and
    background jobs do, stays ignored); returns the previous handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(sig) is not signal.SIG_IGN}


def main(argv: list[str] | None = None) -> int:
    previous = _on_stop_signals(_stop)
    try:
        return _main(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `distill train CONFIG --resume latest key=value`: overrides may follow options too.
    if extra and all("=" in e and not e.startswith("-") for e in extra) and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.debug:
        _one_line_warnings(args.command)
    try:
        code = args.func(args)
        from distill.core.dist import leave

        leave()  # a finished job's ranks leave together (only after success: a failed peer would never arrive)
        return code
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        _on_stop_signals(signal.SIG_IGN)  # under torchrun the launcher passes the signal on again: one line only
        terminated = isinstance(err, Terminated)
        if int(os.environ.get("RANK", "0")) == 0:  # every rank got the signal; rank 0 speaks for the job
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            echo = "" if terminated else "\n"  # after the terminal's ^C
            print(f"{echo}distill {args.command}: error: {what}" + (f"; {err}" if str(err) else ""), file=sys.stderr)
        return TERMINATED if terminated else INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        from distill.monitor import TrainingAborted

        aborted = isinstance(err, TrainingAborted)  # its message says where and why the run stopped
        print(f"distill {args.command}: error: {str(err) if aborted else _cause(err)}", file=sys.stderr)
        return ABORTED if aborted else FAILED


if __name__ == "__main__":
    sys.exit(main())
