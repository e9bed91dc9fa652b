"""torchrun entry for tests/test_distributed.py: `python -m noisystudent ARGS` (cli.main), plus each
rank writes a hash of the weights `fit` returned (and of the raw model) to OUT/<desc>.rank<r>.

usage: python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_fit_hashes.py OUT run CONFIG ...
"""
import hashlib
import os
import sys

import noisystudent.stages.train as train_mod
from noisystudent import cli


def state_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    out = sys.argv[1]
    orig_fit = train_mod.fit

    def fit(model, cfg, source, **kw):
        res = orig_fit(model, cfg, source, **kw)
        rank = int(os.environ.get("RANK", 0))
        with open(os.path.join(out, f"{kw['desc'].replace(' ', '_')}.rank{rank}"), "w") as f:
            f.write(f"{state_hash(res.model.state_dict())} {state_hash(model.state_dict())}\n")
        return res

    train_mod.fit = fit
    sys.exit(cli.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
