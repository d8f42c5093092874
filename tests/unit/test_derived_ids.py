"""Derived notification ids: the fast path must give exactly the ids uuid5 gave,
or a redelivered request (or a broadcast's recipient) would get a new id and be
sent again."""

from __future__ import annotations

import uuid

from hypothesis import given, strategies as st

from policy.types import ID_NAMESPACE, derive_id, recipient_id


@given(st.text())
def test_derive_id_is_uuid5_in_the_namespace(key):
    assert derive_id(key) == str(uuid.uuid5(ID_NAMESPACE, key))


def test_ids_already_stored_stay_the_same():
    # a value the uuid5 version wrote: a change here re-sends every redelivered broadcast
    assert recipient_id("b4d3c0de-0000-4000-8000-000000000001", "u1") == "7b36cf37-84dc-537f-bfe9-f4d9066cf3ee"
    assert uuid.UUID(derive_id("k")).version == 5
