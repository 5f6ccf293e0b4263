"""Stage index: dense retrieval of each record's top-k profile items (and another user's, for
the rag_random baseline), with profile embeddings cached by content hash."""

import time

import polars as pl

from personal_nlf import data, retrieval, stage, tracking
from personal_nlf.io import write_json_atomic, write_parquet_atomic

INDEX_SCHEMA = {"id": pl.String, "top_ids": pl.List(pl.String), "top_scores": pl.List(pl.Float64),
                "random_user_id": pl.String, "random_top_ids": pl.List(pl.String),
                "random_top_scores": pl.List(pl.Float64)}


def main(args, params):
    cfg = params.retrieval
    with tracking.stage_run(params.tracking, "index", {"retrieval": cfg.model_dump(), "seed": params.seed}) as run:
        t0 = time.time()
        enc = retrieval.load_encoder(cfg.encoder, args.models_dir, cfg.similarity, cfg.pooling, cfg.batch_size, cfg.device)
        cache = retrieval.EmbeddingCache(args.cache_dir, enc.key)
        stats = {"records": 0, "profile_texts": 0, "encoded_now": 0, "empty_profiles": 0}
        summary = {"encoder": cfg.encoder, "similarity": enc.similarity, "k": cfg.k, "splits": {}}
        for domain in params.data.domains:
            for split in params.data.splits:
                records = data.load_prepared(args.prepared, domain, split)
                rows, s = retrieval.build_index(records, enc, cache, cfg.k, params.seed, progress=not stage.is_quiet(args))
                write_parquet_atomic(f"{args.out}/{domain}/{split}.parquet", pl.DataFrame(rows, schema=INDEX_SCHEMA))
                empty = sum(1 for r in records if not r.profile)
                stats["records"] += len(records)
                stats["profile_texts"] += s["profile_texts"]
                stats["encoded_now"] += s["encoded_now"]
                stats["empty_profiles"] += empty
                summary["splits"][f"{domain}/{split}"] = {"n": len(records), "empty_profiles": empty}
        if stats["empty_profiles"]:
            stage.log.warning("%d records have an empty profile: they fall back to no retrieval", stats["empty_profiles"])
        write_json_atomic(f"{args.out}/summary.json", summary)
        stats["seconds"] = round(time.time() - t0, 2)
        stage.log.info("indexed: %s", stats)
        run.log_metrics(stats)


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--prepared", required=True)
    p.add_argument("--models-dir", required=True, help="folder of materialized embedded models")
    p.add_argument("--cache-dir", required=True, help="content-addressed profile-embedding cache")
    p.add_argument("--out", required=True)
    stage.run(main, p)
