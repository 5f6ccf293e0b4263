import numpy as np
import pytest

from personal_nlf import retrieval
from personal_nlf.data import ProfileItem, Record


def test_top_k_orders_by_score_and_is_stable_on_ties():
    docs = np.array([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7], [1.0, 0.0]])
    got = retrieval.top_k(np.array([1.0, 0.0]), docs, 3)
    assert [i for i, _ in got] == [1, 3, 2]
    assert got[0][1] == pytest.approx(1.0)
    assert retrieval.top_k(np.array([1.0, 0.0]), np.zeros((0, 2)), 3) == []


def test_other_user_is_a_seeded_derangement():
    for n in (2, 3, 10):
        t = retrieval.other_user(n, seed=7)
        assert sorted(t) == list(range(n)) and all(t[i] != i for i in range(n))
        assert t == retrieval.other_user(n, seed=7)


class FakeST:
    """A hand-made embedding (bag of 3 keywords) standing in for the neural encoder, so the
    expected ranking is known exactly; the real encoder is exercised by the pipeline tests."""

    VOCAB = ["guitar", "camera", "bread"]
    calls = 0

    def encode(self, texts, **kw):
        FakeST.calls += len(texts)
        v = np.array([[t.lower().count(w) for w in self.VOCAB] for t in texts], dtype=np.float32)
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(n == 0, 1, n) if kw.get("normalize_embeddings") else v

    def get_sentence_embedding_dimension(self):
        return 3


def rec(rid, q, texts):
    return Record(rid, q, "", (), tuple(ProfileItem(f"{rid}-p{i}", t) for i, t in enumerate(texts)))


def test_build_index_hand_made_case_and_cache(tmp_path):
    enc = retrieval.Encoder(FakeST(), "fake", "cosine", 8)
    recs = [rec("a", "guitar strings?", ["bread recipe", "guitar amp guitar", "camera lens", "guitar and camera"]),
            rec("b", "camera bag?", ["camera strap", "bread flour"]),
            rec("c", "bread?", [])]
    cache = retrieval.EmbeddingCache(tmp_path, enc.key)
    rows, stats = retrieval.build_index(recs, enc, cache, k=2, seed=0)
    assert rows[0]["top_ids"] == ["a-p1", "a-p3"]
    assert rows[1]["top_ids"] == ["b-p0", "b-p1"]
    assert rows[2]["top_ids"] == []  # empty profile: no retrieval
    assert stats["encoded_now"] == 6
    for r in rows:
        assert r["random_user_id"] != r["id"]
    # Rerun with new questions: profile texts come from the on-disk cache, nothing re-encoded.
    FakeST.calls = 0
    cache2 = retrieval.EmbeddingCache(tmp_path, enc.key)
    recs2 = [rec("a", "camera?", [p.text for p in recs[0].profile])]
    rows2, stats2 = retrieval.build_index(recs2, enc, cache2, k=1, seed=0)
    assert stats2["encoded_now"] == 0 and FakeST.calls == 1  # only the question
    assert rows2[0]["top_ids"] == ["a-p2"]


def test_contriever_style_encoder_path_mean_pooling_dot(embedded_models):
    """pooling=mean on a bare HF encoder folder takes the Contriever branch (Transformer + mean
    pooling, raw dot product); here on the local MiniLM weights since no hub is reachable."""
    enc = retrieval.load_encoder(str(embedded_models / "all-minilm-l6-v2"), None, pooling="mean")
    assert enc.similarity == "dot"
    v = enc.encode(["a guitar question", "a bread question"])
    assert v.shape[0] == 2 and not np.allclose(np.linalg.norm(v, axis=1), 1.0)
    st = retrieval.load_encoder("embedded:all-minilm-l6-v2", embedded_models)
    assert st.similarity == "cosine"
    assert np.allclose(np.linalg.norm(st.encode(["x"]), axis=1), 1.0, atol=1e-4)
