"""Output helper of the Faust wiring: stopping the worker on a failed batch."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

log = logging.getLogger(__name__)


def fail_stop(what: str, code: int = 70) -> NoReturn:
    """Stop the process at once, before Faust acks the batch: an exception in an agent would ack (and later
    commit) the batch and Faust would restart the agent past it, losing its effects. A restart replays it."""
    log.critical("%s: stopping the worker so the batch is replayed after a restart", what, exc_info=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    _exit(code)


# How fail_stop leaves the process (tests replace it, so a test reaching it fails instead of ending the run).
_exit = os._exit
