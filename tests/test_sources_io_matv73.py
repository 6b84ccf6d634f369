"""sources/io/matv73: MATLAB v7.3 UTF-16 char arrays decode in one step to the strings written (surrogates refused)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.sources.io.matv73 import decode_chars


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)))
def test_char_arrays_decode_in_one_step_to_the_same_strings(texts):
    arrays = [np.frombuffer(t.encode("utf-16-le"), dtype="<u2")[:, None] for t in texts]
    if any(ord(c) > 0xFFFF for t in texts for c in t):
        with pytest.raises(ValueError, match="surrogate"):
            decode_chars(arrays)
    else:
        assert decode_chars(arrays).tolist() == texts
