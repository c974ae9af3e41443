"""One module per `distill` command. Each exposes `add_parser(sub)`, which registers the command and sets
`func=run`, and `run(args) -> int`, which returns the exit code (see `distill.cli` for the codes). A command checks
its inputs and its output paths before it loads a model; it raises `ConfigError` (or any exception) when it cannot
do its job, and the dispatcher turns that into one line on stderr."""

from __future__ import annotations


def no_progress_bars() -> None:
    """`--no-progress`: our bars take it as an argument; the libraries' own (diffusers' and transformers' loading
    bars) are switched off here."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
