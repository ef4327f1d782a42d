"""Transfer accounting sums exactly what was recorded."""

import pytest

from fedcomp.records.meter import TransferMeter


def test_totals_are_sums_of_records():
    meter = TransferMeter()
    for rnd in (1, 2):
        for client in (10, 20, 30):
            meter.record(rnd, "down", client, "train", 100 * client, 110 * client, 400)
            meter.record(rnd, "up", client, "train", client + rnd, 2 * client, 400)
    one = meter.totals(round=1)
    assert one["bytes_down"] == 100 * 60 and one["bytes_up"] == 60 + 3
    assert one["message_bytes_down"] == 110 * 60 and one["dense_bytes_up"] == 1200
    both = meter.totals(upto=2)
    assert both["bytes_up"] == 2 * 60 + 3 + 6 == meter.totals()["bytes_up"]
    per_client = meter.per_client(2)
    assert [c["client"] for c in per_client] == [10, 20, 30]
    assert sum(c["bytes_up"] for c in per_client) == meter.totals(round=2)["bytes_up"]
    assert per_client[0] == {"client": 10, "bytes_up": 12, "bytes_down": 1000,
                             "message_bytes_up": 20, "message_bytes_down": 1100}


def test_direction_is_checked():
    with pytest.raises(ValueError, match="direction"):
        TransferMeter().record(1, "sideways", 1, "train", 1, 1, 1)
