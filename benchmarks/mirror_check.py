r"""How well `init --data`'s mirror check (noisystudent.data.mirror) tells data a mirror changes
(digits) from data it does not (clothes, photos): the check on many seeded draws of small labeled sets
of each data set, a row per (data set, images a class), and how often it would turn the mirror off.

    python benchmarks/mirror_check.py --per-class 5,10,20,100 --draws 10 \
        digits=digits:: mnist=imagefolder:data/mnist-t/s0/test \
        fashion-mnist=idx:../shared/data/fashion-mnist:test \
        cifar10=imagefolder:data/cifar10/test cifar10-gray28=imagefolder:data/cifar10-gray28/test

Each data set is NAME=KIND:ROOT[:SPLIT] (a source kind as in a config: imagefolder, idx, digits...).
Data where a mirror keeps the class should read "off 0/N"; digits should read "off N/N" where the
check can tell (plain 1-NN at least MIN_ABOVE_CHANCE above chance), else stay on (the recipe's setting).
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
    print(f"off when plain 1-NN >= chance + {MIN_ABOVE_CHANCE} and the chance-corrected ratio < {MAX_RATIO}\n")
    print("| data | a class | draws | 1-NN plain | 1-NN mirrored | ratio min / mean / max | mirror off |")
    print("|---|---|---|---|---|---|---|")
    for spec in a.sets:
        name, _, rest = spec.partition("=")
        kind, root, split = (rest.split(":") + ["", ""])[:3]
        src = create_source(SourceConfig(kind=kind, root=root, split=split or "train"), 3)
        for n in (int(x) for x in a.per_class.split(",")):
            checks = [mirror_check_source(src, seed=s, per_class=n) for s in range(a.draws)]
            r = np.array([c.ratio for c in checks])
            off = sum(not c.keeps_class for c in checks)
            print(f"| {name} | {n} | {a.draws} | {np.mean([c.accuracy for c in checks]):.1%} | "
                  f"{np.mean([c.mirrored for c in checks]):.1%} | {np.nanmin(r):.2f} / {np.nanmean(r):.2f} / {np.nanmax(r):.2f} | "
                  f"{off}/{a.draws} |")


if __name__ == "__main__":
    main()
