"""ImageNet-C / ImageNet-P summary metrics (Hendrycks & Dietterich, ICLR 2019). Pure functions.

Errors E^f_{s,c} are model f's top-1 error fractions on corruption c at severity s; "base" is the
baseline model (AlexNet in the paper). Results are ratios (x100 for the paper's percentages);
definitions of CE, mCE, rCE and mFR are in the function docstrings and docs/robustness.md.

Undefined terms: where a denominator is 0 (the baseline never errs on c, never flips on p), or for
rCE <= 0 (the baseline is not hurt by c), the per-corruption value is NaN and a RuntimeWarning
names it. The mean is then NaN too: averaging over the remaining corruptions would silently
change what "mCE" means. Malformed input (errors outside [0, 1], mismatched severities, a
corruption missing from the baseline) raises ValueError.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

__all__ = [
    "corruption_error",
    "relative_corruption_error",
    "mean_corruption_error",
    "relative_mce",
    "unnormalized_mean_corruption_error",
    "mean_flip_rate",
]


def _rates(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{what}: no values")
    bad = [v for v in values if not (0.0 <= v <= 1.0)]
    if bad:
        raise ValueError(f"{what}: rates must be fractions in [0, 1], got {bad}")
    return values


def _paired(errors: Sequence[float], baseline: Sequence[float]) -> tuple[list[float], list[float]]:
    e, b = _rates(errors, "errors"), _rates(baseline, "baseline errors")
    if len(e) != len(b):
        raise ValueError(f"{len(e)} errors but {len(b)} baseline errors: severities must match")
    return e, b


def _ratio(numerator: float, denominator: float, strictly_positive: bool = False) -> float:
    if denominator == 0 or (strictly_positive and denominator < 0):
        return math.nan
    return numerator / denominator


def _warn_undefined(values: Mapping[str, float], what: str) -> None:
    nan_keys = [k for k, v in values.items() if math.isnan(v)]
    if nan_keys:
        warnings.warn(f"{what} undefined (NaN) for {', '.join(nan_keys)}: the baseline's denominator "
                      "is not positive there (see noisystudent.robustness.metrics)",
                      RuntimeWarning, stacklevel=3)


def _ce(errors: Sequence[float], baseline: Sequence[float]) -> float:
    e, b = _paired(errors, baseline)
    return _ratio(sum(e), sum(b))


def _rce(errors: Sequence[float], clean: float, baseline: Sequence[float], baseline_clean: float) -> float:
    e, b = _paired(errors, baseline)
    (ce,), (cb,) = _rates([clean], "clean_error"), _rates([baseline_clean], "baseline_clean_error")
    return _ratio(sum(x - ce for x in e), sum(x - cb for x in b), strictly_positive=True)


def corruption_error(errors_by_severity: Sequence[float], baseline_errors_by_severity: Sequence[float]) -> float:
    """CE = sum_s E^f_s / sum_s E^base_s (NaN if the baseline never errs)."""
    value = _ce(errors_by_severity, baseline_errors_by_severity)
    _warn_undefined({"this corruption": value}, "corruption error")
    return value


def relative_corruption_error(
    errors_by_severity: Sequence[float],
    clean_error: float,
    baseline_errors_by_severity: Sequence[float],
    baseline_clean_error: float,
) -> float:
    """rCE = sum_s (E^f_s - E^f_clean) / sum_s (E^base_s - E^base_clean) (NaN if the baseline's
    degradation is <= 0)."""
    value = _rce(errors_by_severity, clean_error, baseline_errors_by_severity, baseline_clean_error)
    _warn_undefined({"this corruption": value}, "relative corruption error")
    return value


def _keys(values: Mapping[str, object], baseline: Mapping[str, object], what: str) -> list[str]:
    if not values:
        raise ValueError(f"no {what}s given")
    missing = sorted(set(values) - set(baseline))
    if missing:
        raise ValueError(f"baseline lacks {what}(s): {', '.join(missing)}")
    return list(values)


def _mean(values: Mapping[str, float]) -> float:
    return math.fsum(values.values()) / len(values)  # NaN in -> NaN out, by design


def mean_corruption_error(
    errors: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]]
) -> tuple[float, dict[str, float]]:
    """(mCE, {corruption: CE}) over the corruptions in `errors` (each a list of per-severity errors)."""
    per = {c: _ce(errors[c], baseline[c]) for c in _keys(errors, baseline, "corruption")}
    _warn_undefined(per, "corruption error")
    return _mean(per), per


def relative_mce(
    errors: Mapping[str, Sequence[float]],
    clean_error: float,
    baseline: Mapping[str, Sequence[float]],
    baseline_clean_error: float,
) -> tuple[float, dict[str, float]]:
    """(relative mCE, {corruption: rCE})."""
    per = {c: _rce(errors[c], clean_error, baseline[c], baseline_clean_error)
           for c in _keys(errors, baseline, "corruption")}
    _warn_undefined(per, "relative corruption error")
    return _mean(per), per


def unnormalized_mean_corruption_error(errors: Mapping[str, Sequence[float]]) -> float:
    """mean_c mean_s E^f_{s,c}: needs no baseline, but weights corruptions by their raw
    difficulty, which is why the paper normalises."""
    if not errors:
        raise ValueError("no corruptions given")
    per = [math.fsum(v) / len(v) for v in (_rates(e, f"errors[{c!r}]") for c, e in errors.items())]
    return math.fsum(per) / len(per)


def mean_flip_rate(
    flip_rates: Mapping[str, float], baseline: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """(mFR, {perturbation: FR / FR^base}) (NaN where the baseline never flips)."""
    per = {}
    for p in _keys(flip_rates, baseline, "perturbation"):
        (fr,), (fb,) = _rates([flip_rates[p]], f"flip_rates[{p!r}]"), _rates([baseline[p]], f"baseline[{p!r}]")
        per[p] = _ratio(fr, fb)
    _warn_undefined(per, "flip rate ratio")
    return _mean(per), per
