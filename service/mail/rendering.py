"""Render email templates from ``email_templates/`` into subject, HTML and text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG
from typing import Any

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from service.config import PROJECT_ROOT

EMAIL_TEMPLATES_DIR = PROJECT_ROOT / "email_templates"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=4)
def email_environment(directory: Path = EMAIL_TEMPLATES_DIR) -> Environment:
    """One Jinja environment per template folder; autoescape for .html always on."""
    return Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def templates_version(directory: Path = EMAIL_TEMPLATES_DIR) -> tuple[tuple[str, int, int], ...]:
    """Each template file with when it last changed and its size: a cache of rendered
    emails keyed on this sees an edited, added or removed template at once.

    A file that vanishes while the folder is read (an editor's swap file, a deploy
    replacing the folder) is left out, not an error: an error here would fail the
    batch's messages.
    """
    files = []
    # os.walk, not rglob: it passes over a folder it can no longer read, where rglob raises.
    for folder, _, names in os.walk(directory):
        for name in names:
            path = Path(folder, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if S_ISREG(stat.st_mode):
                files.append((str(path.relative_to(directory)), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(files))


_INLINER = css_inline.CSSInliner(keep_style_tags=True)


def render_email(name: str, context: dict[str, Any]) -> RenderedEmail:
    """Render ``<name>.txt`` and ``<name>.html``; the text template sets ``subject``.

    CSS from the HTML's <style> is inlined for mail clients that drop it; the
    style tag is kept for the media queries that cannot be inlined.
    """
    env = email_environment()
    text_template = env.get_template(f"{name}.txt")
    text_module = text_template.make_module(context)
    subject = " ".join(str(getattr(text_module, "subject", "")).split())
    if not subject:
        raise ValueError(f"email template {name}.txt sets no subject")
    html = env.get_template(f"{name}.html").render(context)
    return RenderedEmail(subject=subject, html=_INLINER.inline(html), text=str(text_module))
