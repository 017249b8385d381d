"""Numbers and strangers' text for people."""

from __future__ import annotations

import math


def quoted(text: str, limit: int = 60) -> str:
    """Text a stranger chose (a link's value) for a Markdown message: as code, so it adds no links, images or
    emphasis of its own, and at most `limit` characters."""
    text = text.replace("`", "'").replace("\n", " ")
    return f"`{text[:limit]}{'…' if len(text) > limit else ''}`"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
