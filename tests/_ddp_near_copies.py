"""torchrun entry for tests/test_nearcopy.py: every rank calls `cached_near_copies` on the same pool
and test folders (a collective: each searches a share of the pool), twice (the second read back from
the cache), and writes to OUT/rank<r>.json what it returned and how many images of each source it
decoded.

usage: python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_near_copies.py POOL TEST OUT
"""
import json
import sys
from pathlib import Path

import torch.distributed as dist

import noisystudent.data.nearcopy as nc
from noisystudent.config import SourceConfig
from noisystudent.data import create_source


def main():
    pool_dir, test_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    pool = create_source(SourceConfig(kind="folder", root=pool_dir), 3)
    test = create_source(SourceConfig(kind="folder", root=test_dir), 3)
    decoded = []
    real = nc.source_thumbnails
    nc.source_thumbnails = lambda src, *a, **k: (decoded.append(len(src)), real(src, *a, **k))[1]
    prints = {"test": "t", "unlabeled": "u"}
    first = nc.cached_near_copies(pool, {"test": test}, prints, out / "cache" / "near-copies.json")
    searched = list(decoded)
    again = nc.cached_near_copies(pool, {"test": test}, prints, out / "cache" / "near-copies.json")
    (out / f"rank{rank}.json").write_text(json.dumps({"first": first, "again": again, "decoded": searched,
                                                      "decoded_again": decoded[len(searched):]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
