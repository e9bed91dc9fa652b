"""torchrun entry for tests/test_cache_budget.py: every rank caches the same folder of images through
`cache_if_fits` with the ranks' agreement (`distributed.all_ranks`), and writes what it got to
OUT/rank<r> ("cached" or "files").

usage: python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_cache_agree.py FOLDER OUT SMALL_RANK
SMALL_RANK: the rank whose memory budget is too small (NOISYSTUDENT_CACHE_GB=0), or -1 for none.
"""
import os
import sys

import torch
import torch.distributed as dist

from noisystudent.config import SourceConfig
from noisystudent.data import ArraySource, cache_if_fits, create_source
from noisystudent.distributed import all_ranks


def main():
    folder, out, small = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == small:
        os.environ["NOISYSTUDENT_CACHE_GB"] = "0"
    src = create_source(SourceConfig(kind="folder", root=folder), 3)
    got = cache_if_fits(src, "skip", "data.test", 0, lambda fits: all_ranks(fits, torch.device("cpu")))
    with open(os.path.join(out, f"rank{rank}"), "w") as f:
        f.write("cached" if isinstance(got, ArraySource) else "files")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
