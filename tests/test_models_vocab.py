"""models/vocab: vocabularies reserve padding and unknown and round-trip; they grow with the model's embedding
tables (sessions, per-unit rows) keeping the old rows, and the new rows train."""

from __future__ import annotations

import pytest
import torch
from helpers.models import latent_rows, small_model
from neurobridge.models.patching import collate
from neurobridge.models.vocab import PAD, UNK, Vocab, Vocabularies, unit_key


@pytest.fixture(scope="module")
def rows():
    return latent_rows(0, trials=8, mua_session=True)


def test_vocab_reserves_pad_and_unknown_and_round_trips(tmp_path, rows):
    v = Vocabularies.from_rows(rows)
    assert v.session.keys[:2] == ["<pad>", "<unk>"] and PAD == 0 and UNK == 1
    assert v.session.lookup(["s1", "never-seen"]).tolist() == [v.session.index["s1"], UNK]
    v.save(tmp_path / "vocab.json")
    assert Vocabularies.load(tmp_path / "vocab.json").to_dict() == v.to_dict()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a vocabulary JSON"):
        Vocabularies.load(tmp_path / "bad.json")


def test_extend_grows_the_embedding_in_place_and_keeps_old_rows(rows):
    vocabs = Vocabularies.from_rows(rows)
    model = small_model(vocabs)
    old = model.ctx_emb["session"].weight.detach().clone()
    added = model.extend_vocab(vocabs, "session", ["s9", "s0"])  # s0 exists: only s9 is new
    w = model.ctx_emb["session"].weight
    assert added == ["s9"] and w.shape[0] == len(vocabs.session) == old.shape[0] + 1
    assert torch.equal(w[: old.shape[0]], old) and torch.equal(w[-1], old[UNK])
    new_row = {**rows[0], "session": "s9"}
    b = collate([new_row], vocabs, 8)
    assert int(b.context["session"][0]) == vocabs.session.index["s9"]
    model(b).loss.backward()  # the new row trains
    assert w.grad[-1].abs().sum() > 0
    with pytest.raises(ValueError, match="embedding has"):
        Vocab(["a"]).extend(["b"], table=torch.nn.Embedding(5, 4))


def test_units_get_their_own_rows_and_a_new_sessions_units_extend_both_tables(rows):
    rows = [{**r, "unit_ids": [f"u{i}" for i in range(r["n_units"])]} for r in rows]
    vocabs = Vocabularies.from_rows(rows)  # pretraining saw every session but s1
    vocabs.unit.add([unit_key(r["session"], u) for r in rows if r["session"] != "s1" for u in r["unit_ids"]])
    model = small_model(vocabs)
    assert model.unit_embed_in.num_embeddings == model.unit_embed_out.num_embeddings == len(vocabs.unit)
    b = collate(rows, vocabs, 8)
    s1 = [i for i, r in enumerate(rows) if r["session"] == "s1"]
    real = b.token_cells[s1]
    assert (b.token_unit[s1][real] == UNK).all()  # units unknown to the vocabulary share the UNK row
    known = b.token_unit[[i for i in range(len(rows)) if i not in s1]]
    assert known.max() >= 2 and (known[~b.token_cells[[i for i in range(len(rows)) if i not in s1]]] == PAD).all()
    old_in, old_out = model.unit_embed_in.weight.detach().clone(), model.unit_embed_out.weight.detach().clone()
    new = [unit_key("s1", u) for u in rows[s1[0]]["unit_ids"]]
    assert model.extend_vocab(vocabs, "unit", new) == sorted(new)
    for table, old in ((model.unit_embed_in, old_in), (model.unit_embed_out, old_out)):
        assert table.num_embeddings == len(vocabs.unit) == old.shape[0] + len(new)
        assert torch.equal(table.weight[: old.shape[0]], old) and torch.equal(table.weight[-1], old[UNK])
    b = collate(rows, vocabs, 8)
    assert (b.token_unit[s1][b.token_cells[s1]] >= old_in.shape[0]).all()  # now each s1 unit has its own row
    model(b, mode="heldout").loss.backward()
    assert model.unit_embed_out.weight.grad[old_in.shape[0] :].abs().sum() > 0  # and the new rows train


def test_group_lookups_are_remembered_but_see_keys_added_later():
    """A session's unit layout is looked up once per run, not once per batch; a key added by ``extend`` (a new
    session at fine-tuning) is seen at once, and a remembered result cannot be changed by a caller."""
    v = Vocab(["a"])
    calls = []

    def keys():
        calls.append(1)
        return ["a", "b"]

    first = v.lookup_group(("s", ("a", "b")), keys)
    assert first.tolist() == [2, UNK]
    assert v.lookup_group(("s", ("a", "b")), keys) is first and len(calls) == 1
    v.extend(["b"])
    assert v.lookup_group(("s", ("a", "b")), keys).tolist() == [2, 3]
    with pytest.raises(ValueError):
        first[0] = 0
