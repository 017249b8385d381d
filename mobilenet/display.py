"""Numbers and strangers' text for people."""

from __future__ import annotations

import math
import unicodedata

UNSHOWN = {"Cc", "Cf", "Zl", "Zp"}  # control, format, line and paragraph separators


def quoted(text: str, limit: int = 60) -> str:
    """Text a stranger chose (a link's value) for a Markdown message: as code, so it adds no links, images or
    emphasis of its own, and at most `limit` characters. Line breaks of any kind (a \\r\\r ends the code span
    and its paragraph) and other control and format characters (bidirectional overrides) become spaces."""
    shown = "".join(" " if unicodedata.category(c) in UNSHOWN else c for c in text[:limit].replace("`", "'"))
    return f"`{shown}{'…' if len(text) > limit else ''}`"


def percents_apart(a: float, b: float) -> tuple[str, str]:
    """Two shares as percentages with the fewest decimals (up to two) that tell them apart: 41.9% below 42.1%,
    not 42% below 42%."""
    for decimals in range(3):
        shown = f"{a:.{decimals}%}", f"{b:.{decimals}%}"
        if shown[0] != shown[1]:
            return shown
    return shown


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
