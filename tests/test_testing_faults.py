"""testing/faults: a fault-injection spec (``NB_CHAOS``) with a misspelt key or value is refused, naming it."""

from __future__ import annotations

import pytest
from neurobridge.testing.faults import ChaosError, parse


def test_a_misspelt_chaos_spec_is_refused_naming_the_key():
    with pytest.raises(ChaosError, match="NB_CHAOS: attempts"):
        parse('{"kill": "*", "attempts": "twice"}')
    with pytest.raises(ChaosError, match="NB_CHAOS: atx"):
        parse('{"kill": "*", "atx": "write"}')
    assert parse(None) is None
