r"""How well `init --data`'s mirror check (noisystudent.data.mirror) tells data a mirror changes
(digits) from data it does not (clothes, photos): the check on many seeded draws of small labeled sets
of each data set, a row per (data set, images a class): each opinion's (raw pixels, gradient
histograms) 1-NN accuracy on the images and their mirrors, its ratio range over the draws where it
counts, and how often the check would turn the mirror off.

    python benchmarks/mirror_check.py --per-class 5,10,20,100 --draws 10 \
        digits=digits:: mnist=imagefolder:data/mnist-t/s0/test mnistm=imagefolder:data/mnistm-t/s0/test \
        fashion-mnist=idx:../shared/data/fashion-mnist:test \
        cifar10=imagefolder:data/cifar10/test cifar10-gray28=imagefolder:data/cifar10-gray28/test

Each data set is NAME=KIND:ROOT[:SPLIT] (a source kind as in a config: imagefolder, idx, digits...).
Data where a mirror keeps the class should read "off 0/N"; digits should read "off N/N" where the
check can tell (some opinion's 1-NN at least MIN_ABOVE_CHANCE above chance), else stay on (the
recipe's setting). The data sets: `benchmarks/transfer_set.py` (--src mnist5k, mnistm5k) and
docs/benchmarks/transfer.md (TM, TMM).
"""
from __future__ import annotations

import argparse

import numpy as np

from noisystudent.config import SourceConfig
from noisystudent.data.mirror import MAX_RATIO, MIN_ABOVE_CHANCE, mirror_check_source
from noisystudent.data.sources import create_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", help="NAME=KIND:ROOT[:SPLIT]")
    ap.add_argument("--per-class", default="5,10,20,100", help="labeled images a class, comma-separated")
    ap.add_argument("--draws", type=int, default=10, help="seeded draws per row")
    a = ap.parse_args()
    print(f"off when some feature's plain 1-NN >= chance + {MIN_ABOVE_CHANCE} and every such feature's "
          f"chance-corrected ratio < {MAX_RATIO}\n")
    print("| data | a class | draws | pixels: 1-NN plain / mirrored, ratio min-max | gradients: 1-NN plain / "
          "mirrored, ratio min-max | mirror off |")
    print("|---|---|---|---|---|---|")
    for spec in a.sets:
        name, _, rest = spec.partition("=")
        kind, root, split = (rest.split(":") + ["", ""])[:3]
        src = create_source(SourceConfig(kind=kind, root=root, split=split or "train"), 3)
        for n in (int(x) for x in a.per_class.split(",")):
            checks = [mirror_check_source(src, seed=s, per_class=n) for s in range(a.draws)]
            cells = []
            for f in range(len(checks[0].opinions)):
                ops = [c.opinions[f] for c in checks]
                r = np.array([o.ratio for o in ops if o.informative])
                told = f"{r.min():.2f}-{r.max():.2f} ({len(r)} told)" if len(r) else "near chance"
                cells.append(f"{np.mean([o.accuracy for o in ops]):.1%} / {np.mean([o.mirrored for o in ops]):.1%}, {told}")
            off = sum(not c.keeps_class for c in checks)
            print(f"| {name} | {n} | {a.draws} | {cells[0]} | {cells[1]} | {off}/{a.draws} |")

if __name__ == "__main__":
    main()
