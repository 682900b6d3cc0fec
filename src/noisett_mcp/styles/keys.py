"""A bound on TOML dotted keys, checked before `tomllib` sees a manifest.

tomllib checks every prefix of a dotted key against the keys defined so far, so one key of 32,000 parts
(64 kB, under the manifest cap) cost 18 s of CPU per parse. A manifest's keys are flat (`title = ...`),
so a key, or table header, of more than a few parts is refused here, in one linear pass.

The pass reads the text as TOML's lexer does: strings (basic, literal, and their multi-line forms) and
comments are skipped whole, so a dotted URL in a description is not a key. Everything else is read as
runs of key parts (bare words or one-line quoted strings) joined by dots.
"""

from __future__ import annotations

import re

MAX_KEY_PARTS = 8

# Every string form matches to the end of the line (or text) when its closing quote is missing, so that
# no position is scanned twice: the pass stays linear, whatever the text (tomllib then refuses it).
_TOKEN = re.compile(
    r"""
      (?P<skip>
          \#[^\n]*                                    # a comment
        | \"\"\"(?:[^"\\]|\\.?|"(?!""))*(?:\"\"\""{0,2}|\Z)  # a multi-line basic string
        | '''(?:[^']|'(?!''))*(?:''''{0,2}|\Z)       # a multi-line literal string
      )
    | (?P<part>
          [A-Za-z0-9_+\-]+                            # a bare key part (or a number, a date: short)
        | "(?:[^"\\\n]|\\[^\n])*"?                   # a basic string
        | '[^'\n]*'?                                  # a literal string
      )
    | (?P<dot>[ \t]*\.[ \t]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def longest_dotted_key(text: str) -> int:
    """The most parts any dotted run in `text` has (a key `a.b.c` has 3), outside strings and comments."""
    longest = run = 0
    after_dot = False
    for token in _TOKEN.finditer(text):
        kind = token.lastgroup
        if kind == "part":
            run = run + 1 if after_dot else 1
            longest = max(longest, run)
            after_dot = False
        elif kind == "dot":
            after_dot = run > 0
        else:
            run, after_dot = 0, False
    return longest
