"""Phone numbers are masked before logs and spans."""

from __future__ import annotations

import pytest

from gateway.redact import mask_number


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("+15557654321", "+1******4321"),
        ("+442071838750", "+4*******8750"),
        ("client:alice", "client:***"),
        ("sip:bob@example.com", "sip:***"),
        ("12345", "*2345"),
        ("2345", "2345"),
        ("", ""),
    ],
    ids=["us", "uk", "client", "sip", "short-code", "four-digits", "empty"],
)
def test_mask_number(raw: str, masked: str) -> None:
    """Only the country digit and the last four digits of a number survive."""
    assert mask_number(raw) == masked
