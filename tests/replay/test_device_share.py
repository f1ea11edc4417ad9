"""The device share of a two-process replay: each share judges the devices that hash to it, and a swap with a
process that ended raises instead of waiting for ever (command.replay turns it into a ReplayError)."""

from __future__ import annotations

import multiprocessing

import pytest

from stream_app.domain.device_records import DeviceFlag, DeviceView
from stream_app.replay.device_rules import DeviceShare, PeerLost


def _view(device: str) -> DeviceView:
    return DeviceView(device, "v", "e-" + device, "viewer", 1_000, 10)


def test_the_two_shares_split_the_devices_between_them() -> None:
    a, b = multiprocessing.Pipe(duplex=True)
    views = [_view(f"dev-{n}") for n in range(200)]
    first, second = DeviceShare(0, a).mine(views), DeviceShare(1, b).mine(views)
    assert sorted(first + second) == sorted(views) and not set(first) & set(second)
    assert len(first) > 50 and len(second) > 50  # both shares get devices
    with pytest.raises(ValueError, match="0 or 1"):
        DeviceShare(2, a)


def test_a_swap_with_a_share_that_ended_raises() -> None:
    flag = DeviceFlag("v", "e", "device_burst", "detail")
    for index in (0, 1):
        ours, theirs = multiprocessing.Pipe(duplex=True)
        theirs.close()
        with pytest.raises(PeerLost, match=f"device share {1 - index} ended"):
            DeviceShare(index, ours).swap([flag])
