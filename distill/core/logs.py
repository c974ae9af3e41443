"""Library logging: diffusers' own messages held to errors where they are known to be moot."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers' own messages at error level only, restored afterwards."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)
