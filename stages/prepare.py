"""Stage prepare: load + validate LaMP-QA (hub id or local files), write parquet per domain/split."""

from personal_nlf import data, stage, tracking
from personal_nlf.io import stable_hash, write_json_atomic, write_parquet_atomic


def main(args, params):
    cfg = params.data
    total = data.LoadReport()
    manifest = {"source": cfg.source, "splits": {}}
    with tracking.stage_run(params.tracking, "prepare", {"data": cfg.model_dump()}) as run:
        # Validate everything before writing anything: bad input leaves no partial output.
        frames = {}
        for domain in cfg.domains:
            for split in cfg.splits:
                records, report = data.load_split(cfg.source, domain, split, require_rubric=True,
                                                  max_records=cfg.max_records_per_split,
                                                  max_item_chars=cfg.max_profile_item_chars)
                for w in report.warnings:
                    stage.log.warning(w)
                total.merge(report)
                df = data.records_to_frame(records, domain, split)
                frames[(domain, split)] = df
                manifest["splits"][f"{domain}/{split}"] = {
                    "n": len(records),
                    "content_hash": stable_hash(df.to_dicts()),
                    "empty_profiles": report.empty_profiles,
                    "mean_profile_items": round(sum(len(r.profile) for r in records) / max(1, len(records)), 2),
                }
        for (domain, split), df in frames.items():
            write_parquet_atomic(data.prepared_path(args.out, domain, split), df)
        counts = {k: getattr(total, k) for k in ("n_records", "empty_profiles", "auto_profile_ids",
                                                 "dropped_empty_items", "truncated_items")}
        manifest["counts"] = counts
        write_json_atomic(f"{args.out}/manifest.json", manifest)
        stage.log.info("prepared %d records: %s", total.n_records, counts)
        run.log_metrics(counts)


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--out", required=True, help="folder for <domain>/<split>.parquet")
    stage.run(main, p)
