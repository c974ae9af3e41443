"""The `distill` command: a dispatcher over one module per command, `distill.commands.<name>`.

Each command module exposes `add_parser(sub)` (which sets `func=run`) and `run(args) -> int`. Commands check what
they can (config, inputs, output paths) before they load a model. Whatever stops a command from doing its job ends
as one line on stderr, `distill <command>: error: <cause>`, and one of the exit codes below; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = ("sample", "train", "export", "eval", "gate", "demo", "compare", "plan")

OK, REGRESSION, FAILED, ABORTED, INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = f"""exit codes:
  {OK}    done
  {REGRESSION}    `distill gate` found a regression (only gate uses it)
  {FAILED}    the command could not do its job: bad arguments or config, a missing, incomplete or corrupt file,
       an output path that cannot be written, or any unexpected error
  {ABORTED}    `distill train` was stopped by its loss guard (the last good checkpoint is kept)
  {INTERRUPTED}  interrupted (Ctrl-C)

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


def main(argv: list[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\ndistill {args.command}: error: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        from distill.monitor import TrainingAborted

        aborted = isinstance(err, TrainingAborted)  # its message says where and why the run stopped
        print(f"distill {args.command}: error: {str(err) if aborted else _cause(err)}", file=sys.stderr)
        return ABORTED if aborted else FAILED


if __name__ == "__main__":
    sys.exit(main())
