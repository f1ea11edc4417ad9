"""Binds the authenticity rules of the domain to the scorer (TEMPORARY pass-through until domain.rules lands)."""

from __future__ import annotations

from typing import Any

from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.partition import Rules
from stream_app.domain.policy import Policy
from stream_app.domain.scoring import VideoLedger


def build_rules(policy: Policy) -> Rules:
    def judge_view(ledger: VideoLedger, view: ViewEvent) -> tuple[str | None, str, list[str]]:
        return None, "", []

    def judge_interaction(ledger: VideoLedger, interaction: InteractionEvent) -> tuple[str | None, str]:
        return None, ""

    def judge_at_settlement(ledger: VideoLedger, event: dict[str, Any], window_end_ms: int) -> tuple[str | None, str]:
        return None, ""

    return Rules(judge_view, judge_interaction, judge_at_settlement)
