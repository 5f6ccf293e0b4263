"""Dense retrieval over a user's profile: query = question, documents = profile item texts.

Two encoder families, as sentence-transformers models:
- sentence-transformers folders (the embedded all-MiniLM-L6-v2): normalized embeddings, cosine;
- plain HF encoders such as facebook/contriever-msmarco: mean pooling and raw dot product, as in
  the LaMP-QA reference.
Profile embeddings are cached by (encoder, text) content hash, so a rerun with new questions or a
new k re-encodes nothing that it has already seen.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import models
from .data import Record


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Encoder:
    model: object  # sentence_transformers.SentenceTransformer
    key: str  # identifies encoder weights + pooling + similarity, for the embedding cache
    similarity: str  # "cosine" | "dot"
    batch_size: int

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.similarity == "cosine",
            show_progress_bar=progress,
        ).astype(np.float32)


def load_encoder(ref: str, models_dir, similarity="auto", pooling="auto", batch_size=64, device="auto") -> Encoder:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    path = models.resolve(ref, models_dir)
    device = pick_device(device)
    is_st_folder = Path(path, "modules.json").exists()
    if is_st_folder and pooling == "auto":
        model = SentenceTransformer(path, device=device)
        similarity = "cosine" if similarity == "auto" else similarity
    else:
        # Contriever-style: a bare HF encoder with our pooling; the reference uses mean + dot.
        word = st_models.Transformer(path)
        pool = st_models.Pooling((word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") else word.get_word_embedding_dimension()), pooling_mode="mean" if pooling in ("auto", "mean") else "cls")
        model = SentenceTransformer(modules=[word, pool], device=device)
        similarity = "dot" if similarity == "auto" else similarity
    weights = models.folder_hash(path) if Path(path).exists() else ref
    key = hashlib.sha256(f"{weights}|{pooling}|{similarity}".encode()).hexdigest()[:16]
    return Encoder(model, key, similarity, batch_size)


class EmbeddingCache:
    """Content-addressed embeddings: <dir>/<encoder key>/shard-*.npz (keys + vectors).

    Each run that encodes something new adds one shard (written atomically), so a killed run
    loses at most its own new vectors and never corrupts old ones.
    """

    def __init__(self, root: str | Path, encoder_key: str):
        self.dir = Path(root) / encoder_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard) as z:
                for k, v in zip(z["keys"], z["vectors"]):
                    self.vectors[str(k)] = v

    @staticmethod
    def text_key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def embed(self, encoder: Encoder, texts: list[str], progress: bool = False) -> tuple[np.ndarray, int]:
        """Embeddings for texts (row-aligned) and how many had to be encoded now."""
        keys = [self.text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if missing:
            by_key = dict(zip(keys, texts))
            new = encoder.encode([by_key[k] for k in missing], progress=progress)
            self._write_shard(missing, new)
            self.vectors.update(zip(missing, new))
        if not texts:
            return encoder.encode([]), 0
        return np.stack([self.vectors[k] for k in keys]), len(missing)

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        n = len(list(self.dir.glob("shard-*.npz")))
        final = self.dir / f"shard-{n:05d}-{os.getpid()}.npz"
        tmp = final.with_name(final.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=vectors)
        os.replace(tmp, final)


def top_k(query: np.ndarray, docs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and scores of the k best documents; ties keep profile order (stable)."""
    if docs.shape[0] == 0:
        return []
    scores = docs @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in order]


def other_user(n: int, seed: int) -> list[int]:
    """For rag_random: a seeded derangement, record i gets another record's profile."""
    if n < 2:
        return [0] * n
    order = list(range(n))
    random.Random(seed).shuffle(order)
    target = [0] * n
    for pos, i in enumerate(order):
        target[i] = order[(pos + 1) % n]
    return target


def build_index(records: list[Record], encoder: Encoder, cache: EmbeddingCache, k: int, seed: int, progress=False):
    """Per record: top-k own profile items and top-k of another user's profile (rag_random)."""
    q = encoder.encode([r.question for r in records], progress=progress)
    all_texts = [p.text for r in records for p in r.profile]
    emb, n_new = cache.embed(encoder, all_texts, progress=progress)
    offsets = np.cumsum([0] + [len(r.profile) for r in records])
    prof = [emb[offsets[i]:offsets[i + 1]] for i in range(len(records))]
    others = other_user(len(records), seed)
    rows = []
    for i, r in enumerate(records):
        own = top_k(q[i], prof[i], k)
        j = others[i]
        rand = top_k(q[i], prof[j], k) if j != i else []
        rows.append(
            {
                "id": r.id,
                "top_ids": [r.profile[a].id for a, _ in own],
                # Rounded so cached and fresh embeddings give byte-identical outputs.
                "top_scores": [round(s, 5) for _, s in own],
                "random_user_id": records[j].id if j != i else None,
                "random_top_ids": [records[j].profile[a].id for a, _ in rand],
                "random_top_scores": [round(s, 5) for _, s in rand],
            }
        )
    return rows, {"profile_texts": len(all_texts), "encoded_now": n_new, "from_cache": len(set(all_texts)) - n_new}
