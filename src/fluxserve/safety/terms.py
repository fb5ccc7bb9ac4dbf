"""The operator's list of blocked prompt terms: plain terms and ``/regex/`` lines. No torch.

One entry per line; blank lines and ``#`` comments are skipped. A plain term matches on word
boundaries, case-insensitively ("cat" blocks "a Cat sat", not "concatenate"); a line written
``/.../`` is a regular expression, also case-insensitive.
"""

from __future__ import annotations

import re
import unicodedata
from importlib import resources
from pathlib import Path

from fluxserve.errors import ConfigurationError
from fluxserve.safety.verdict import Verdict, allowed

CHECKER = "blocked-terms"


class TermList:
    def __init__(self, lines: list[str], source: str = "") -> None:
        self.source = source
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) > 2 and line.startswith("/") and line.endswith("/"):
                try:
                    pattern = re.compile(line[1:-1], re.IGNORECASE | re.DOTALL)
                except re.error as exc:
                    raise ConfigurationError(
                        f"{source}:{number}: {line} is not a valid regular expression ({exc})"
                    ) from None
            else:
                pattern = re.compile(rf"(?<!\w){re.escape(line)}(?!\w)", re.IGNORECASE)
            self.patterns.append((line, pattern))

    @classmethod
    def from_file(cls, path: Path) -> TermList:
        try:
            return cls(path.read_text(encoding="utf-8").splitlines(), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"--blocked-terms {path} cannot be read ({exc})") from None

    @classmethod
    def default(cls) -> TermList:
        text = resources.files("fluxserve.safety").joinpath("blocked_terms.txt").read_text()
        return cls(text.splitlines(), "the default blocked-terms list")

    def check(self, text: str) -> Verdict:
        """Blocked when any entry matches ``text``; the verdict names the entry."""
        text = normalise(text)
        for entry, pattern in self.patterns:
            if pattern.search(text):
                return Verdict(
                    allowed=False, category=f"blocked_term: {entry}", score=1.0, checker=CHECKER
                )
        return allowed(CHECKER)


def normalise(text: str) -> str:
    """The text as the model reads it: NFKC (fullwidth and other look-alike forms become
    plain letters, as T5's tokenizer normalises them), invisible format characters (zero-
    width spaces, soft hyphens) removed, and runs of whitespace (newlines too) made one
    space. Otherwise "ｌｏｌｉｃｏｎ" or "l\u200bolicon" would slip past the list."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


def load_terms(setting: str) -> TermList | None:
    """``--blocked-terms``: ``default`` (the shipped list), ``off``, or a file."""
    if setting == "off":
        return None
    if setting == "default":
        return TermList.default()
    return TermList.from_file(Path(setting).expanduser())
