"""A stage's fingerprint: what of its config and inputs decides whether its outputs are still current.

It hashes the stage's resolved config section and the fingerprints and output hashes of the stages
it reads (`run_stage` skips a stage whose record has the same fingerprint). Two kinds of key are
left out, so that changing them never redoes finished work:

- keys added after runs existed, while they keep the default that reproduces the older behaviour
  (`ADDED_LATER`): upgrading does not redo labels and every student after them;
- keys that change how fast a stage runs, not what it writes (`SPEED_ONLY`): label.batch_size gives
  the same probabilities up to the float rounding of batched kernels, so lowering it after an
  out-of-memory error resumes the label stage from its finished shards instead of starting over;
  evaluate.batch_size the same scores (its default became `auto`: evaluations recorded at 256 stay).
"""
from __future__ import annotations

import copy

from ..config import config_hash

__all__ = ["ADDED_LATER", "SPEED_ONLY", "fingerprinted", "stage_fingerprint"]

ADDED_LATER = {"shift_tta": 0, "near_copies": True}
SPEED_ONLY = (("label", "batch_size"), ("evaluate", "batch_size"))   # paths in the config a stage hands to `run_stage`


def fingerprinted(config):
    """What a stage's fingerprint hashes of its config: all of it (nested dicts and lists too), less
    the ADDED_LATER keys at their default. The stage record still saves the whole config."""
    if isinstance(config, dict):
        return {k: fingerprinted(v) for k, v in config.items()
                if not (k in ADDED_LATER and v == ADDED_LATER[k])}
    if isinstance(config, list):
        return [fingerprinted(v) for v in config]
    return config


_GONE = object()      # a path the config does not have / a key to remove


def _get(config, path):
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return _GONE
        config = config[key]
    return config


def _with(config: dict, values: dict) -> dict:
    """A copy of `config` with each path of `values` that it has set to its value (removed where
    the value is `_GONE`)."""
    out = copy.deepcopy(config)
    for (*parents, key), v in values.items():
        node = _get(out, parents)
        if isinstance(node, dict) and key in node:
            if v is _GONE:
                del node[key]
            else:
                node[key] = v
    return out


def stage_fingerprint(config: dict, upstream: dict, record: dict | None = None) -> str:
    """The fingerprint of a stage run with `config` on `upstream`. `record`, the stage's existing
    record: one written before a SPEED_ONLY key left the fingerprint (2026-12-04) hashed it, and
    is still this stage if it differs from `config` only there; its fingerprint is returned then."""
    fp = config_hash({"config": fingerprinted(_with(config, dict.fromkeys(SPEED_ONLY, _GONE))), "inputs": upstream})
    old = (record or {}).get("fingerprint")
    if old is None or old == fp:
        return fp
    saved = record.get("config") or {}
    legacy = _with(config, {p: _get(saved, p) for p in SPEED_ONLY})
    return old if config_hash({"config": fingerprinted(legacy), "inputs": upstream}) == old else fp
