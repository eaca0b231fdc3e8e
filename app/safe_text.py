"""Text from users or files that must reach a markdown-rendering element (st.error, st.caption) verbatim."""

from __future__ import annotations

import re

# Everything that can start emphasis, code, links, images, headings, tables, HTML or LaTeX in Streamlit's markdown.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>()#+!|~$:])")


def md_escape(text: str) -> str:
    """Backslash-escape markdown syntax so `text` shows literally (HTML is never enabled anyway)."""
    return _MARKDOWN.sub(r"\\\1", text)
