"""Text files users hand us (prompt lists, YAML configs), read so that a file that is not UTF-8 is named.

Python's own error (`'utf-8' codec can't decode byte 0xff in position 12`) names neither the file nor the line; a
prompts file saved as Latin-1 or UTF-16 by a spreadsheet is a common mistake, so the error says which file, where,
and what to do.
"""

from __future__ import annotations

from pathlib import Path

from distill.core.config import ConfigError


def read_utf8(path: str | Path, what: str) -> str:
    """The text of `path`; ConfigError naming `what`, the file, the line and the byte when it is not UTF-8."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text{utf16}: byte 0x{data[err.start]:02x} at offset "
                          f"{err.start} (line {line}); save it as UTF-8") from None


def read_lines(path: str | Path, what: str) -> list[str]:
    """The non-empty, stripped lines of a UTF-8 text file (one prompt per line)."""
    return [line.strip() for line in read_utf8(path, what).splitlines() if line.strip()]
