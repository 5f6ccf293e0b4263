"""Stage base_model: materialize the embedded models (shipped in PyPI wheels) as HF folders.

With --for-transfer (stage transfer_models): the embedded models that transfer.generators name
and base_model.embedded does not (e.g. Gemma 3 270M), for the summary pipeline's transfer: a separate
output, so the models every other stage reads do not change when the transfer generators do."""

import time

from personal_nlf import models, stage, tracking
from personal_nlf.io import write_json_atomic


def transfer_names(params) -> list[str]:
    refs = [r.model for r in params.transfer.generators.values() if r.model.startswith(models.EMBEDDED_PREFIX)]
    names = sorted({r[len(models.EMBEDDED_PREFIX):] for r in refs} - set(params.base_model.embedded))
    unknown = [n for n in names if n not in models.EMBEDDED]
    if unknown:
        raise stage.StageError(f"transfer.generators name unknown embedded model(s) {unknown}; known: {sorted(models.EMBEDDED)}")
    return names


def main(args, params):
    cfg = params.base_model
    names = transfer_names(params) if args.for_transfer else cfg.embedded
    manifest = {}
    name = "transfer_models" if args.for_transfer else "base_model"
    with tracking.stage_run(params.tracking, name, {"base_model": cfg.model_dump(), "models": names}) as run:
        for name in names:
            t0 = time.time()
            path = models.materialize(name, args.out, cfg.save_dtype, log=stage.log.info)
            manifest[name] = {"path": str(path), "seconds": round(time.time() - t0, 1)}
            stage.log.info("%s -> %s (%.1f s)", name, path, time.time() - t0)
        # The manifest sits inside the output folder (no timings: outputs must be reproducible).
        write_json_atomic(f"{args.out}/manifest.json", {n: {"path": m["path"]} for n, m in manifest.items()})
        run.log_metrics({f"materialize_seconds.{n}": m["seconds"] for n, m in manifest.items()})


if __name__ == "__main__":
    p = stage.parser(__doc__)
    p.add_argument("--out", required=True, help="folder that receives one sub-folder per model")
    p.add_argument("--for-transfer", action="store_true", help="the transfer generators' extra embedded models")
    stage.run(main, p)
