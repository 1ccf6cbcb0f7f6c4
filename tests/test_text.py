"""Text encoders: CPL's static "BertEmb" recipe on the offline MiniLM token table."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here must work without a network

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ovis.models.text import (
    SentenceEmbedding,
    StaticTokenEmbedding,
    build_text_encoder,
    clean_name,
    minilm_path,
)


@pytest.fixture(scope="module")
def encoder() -> StaticTokenEmbedding:
    enc = build_text_encoder("minilm")
    assert isinstance(enc, StaticTokenEmbedding)
    return enc


@pytest.fixture(scope="module")
def token_table() -> torch.Tensor:
    with safe_open(str(minilm_path() / "model.safetensors"), framework="pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


def test_shape_dtype_and_determinism(encoder):
    names = ["person", "dog", "hair drier", "teddy bear"]
    emb = encoder.encode(names)
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and encoder.dim == 384
    assert torch.equal(StaticTokenEmbedding().encode(names), emb)


def test_dog_is_closer_to_cat_than_to_airplane(encoder):
    dog, cat, airplane = encoder.encode(["dog", "cat", "airplane"], normalize=True)
    assert float(dog @ cat) > float(dog @ airplane) + 0.1


@pytest.mark.parametrize("name,pieces", [("skateboard", ["skate", "##board"]),
                                         ("toothbrush", ["tooth", "##brush"]),
                                         ("giraffe", ["gi", "##raf", "##fe"])])
def test_multi_piece_names_are_the_mean_of_their_static_piece_embeddings(encoder, token_table, name, pieces):
    ids = encoder.token_ids([name])[0]
    assert encoder._tokenizer.convert_ids_to_tokens(ids) == pieces  # no [CLS]/[SEP]
    expected = token_table[ids].mean(0)
    assert torch.allclose(encoder.encode([name])[0], expected, rtol=0, atol=1e-6)


def test_lvis_names_are_cleaned_before_embedding(encoder):
    assert clean_name("Bus_(vehicle)") == "bus" and clean_name("teddy_bear") == "teddy bear"
    a, b, c, d = encoder.encode(["bus_(vehicle)", "bus", "teddy_bear", "teddy bear"])
    assert torch.equal(a, b) and torch.equal(c, d)


def test_unnormalised_by_default_and_unit_rows_when_normalised(encoder):
    raw = encoder.encode(["dog", "tennis racket"])
    unit = encoder.encode(["dog", "tennis racket"], normalize=True)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))
    assert torch.allclose(unit.norm(dim=1), torch.ones(2), atol=1e-6)
    assert torch.allclose(unit, F.normalize(raw, dim=1))


def _counting(enc: StaticTokenEmbedding, monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    compute = enc._compute

    def counted(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        return compute(texts)

    monkeypatch.setattr(enc, "_compute", counted)
    return calls


def test_memory_cache_returns_identical_embeddings_without_recomputing(monkeypatch):
    enc = StaticTokenEmbedding()
    calls = _counting(enc, monkeypatch)
    first = enc.encode(["cat", "zebra"])
    first.zero_()  # a caller writing into the result must not corrupt the cache
    second = enc.encode(["cat", "zebra"])
    assert calls == [["cat", "zebra"]]
    assert torch.equal(second, StaticTokenEmbedding().encode(["cat", "zebra"]))
    enc.encode(["zebra", "cat"])  # another vocabulary (order matters) is another entry
    assert len(calls) == 2


def test_disk_cache_round_trip_needs_no_model(tmp_path, monkeypatch):
    enc = build_text_encoder("minilm", cache_dir=tmp_path)
    emb = enc.encode(["fire hydrant", "stop sign"])
    files = list(tmp_path.glob("minilm-*.pt"))
    assert len(files) == 1 and len(files[0].stem.split("-")[1]) == 40  # <encoder>-<sha1>.pt

    fresh = build_text_encoder("minilm", cache_dir=tmp_path)

    def no_model(texts: list[str]) -> torch.Tensor:
        raise AssertionError("disk cache hit must not run the encoder")

    monkeypatch.setattr(fresh, "_compute", no_model)
    assert torch.equal(fresh.encode(["fire hydrant", "stop sign"]), emb)
    assert fresh._table is None  # the token table was never loaded


def test_registry_and_errors(encoder, tmp_path):
    with pytest.raises(ValueError, match="unknown text encoder 'clip'.*minilm"):
        build_text_encoder("clip")
    with pytest.raises(ValueError, match="empty after cleaning"):
        encoder.encode(["(vehicle)"])
    bert = StaticTokenEmbedding.from_hub("bert-base-uncased", hf_cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(RuntimeError, match="bert-base-uncased.*HF_HUB_OFFLINE=0.*pre-download"):
        bert.encode(["dog"])


@pytest.mark.slow
def test_sentence_embedding_option():
    enc = build_text_encoder("minilm-sentence")
    assert isinstance(enc, SentenceEmbedding)
    emb = enc.encode(["a dog", "a cat", "an airplane"])
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])
