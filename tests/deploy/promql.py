"""Helpers for the deploy tests: metric and label names out of PromQL text, and the deploy/ file locations."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+|@\s*(?:start\(\)|end\(\)|[0-9.]+)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_NUMBER = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, labels or numbers."""
    text = _VARIABLE.sub(" ", expr)
    # Matchers first (their strings hold label values), then the remaining strings.
    text = _MATCHERS.sub(" ", text)
    text = _STRING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if match.group(1) is not None or word in KEYWORDS:
            continue  # a function or aggregation call, or an operator keyword
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_* clauses."""
    labels: set[str] = set()
    for clause in _GROUPING.finditer(_VARIABLE.sub(" ", expr)):
        inside = clause.group(0)[clause.group(0).index("(") + 1 : -1]
        labels.update(part.strip() for part in inside.split(",") if part.strip())
    return labels


def label_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every label matcher in the expression."""
    found = []
    for block in _MATCHERS.finditer(expr):
        found.extend(_MATCHER.findall(block.group(0)))
    return found


def promtool_or_skip() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not on PATH: install Debian's `prometheus` package "
            "(apt-get install -y --no-install-recommends prometheus) to run this check"
        )
    return path
