"""Robustness evaluation (paper Sec. 4: ImageNet-C, ImageNet-P and FGSM robustness).

    from noisystudent.robustness import evaluate_robustness, compare_to_baseline
    teacher = evaluate_robustness(teacher_model, images, labels, mean=MEAN, std=STD, cache_dir="runs/cache")
    student = evaluate_robustness(student_model, images, labels, mean=MEAN, std=STD, cache_dir="runs/cache")
    report = compare_to_baseline(student, teacher)  # mCE, relative mCE, mFR of student vs teacher

Corrupted images are cached and every random draw is seeded per image, so all models are scored
on identical inputs. See `corruptions` for which `imagecorruptions` functions are re-implemented.
"""

from .adversarial import fgsm_accuracy, fgsm_attack, predict
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, corrupt_dataset, derive_seed
from .evaluate import compare_to_baseline, eps_key, evaluate_robustness
from .metrics import (
    corruption_error,
    mean_corruption_error,
    mean_flip_rate,
    relative_corruption_error,
    relative_mce,
    unnormalized_mean_corruption_error,
)
from .perturbations import NOISE_PERTURBATIONS, PERTURBATIONS, flip_rate, perturbation_sequence

__all__ = [
    "CORRUPTIONS", "SEVERITIES", "corrupt", "corrupt_dataset", "derive_seed",
    "PERTURBATIONS", "NOISE_PERTURBATIONS", "perturbation_sequence", "flip_rate",
    "predict", "fgsm_attack", "fgsm_accuracy",
    "corruption_error", "relative_corruption_error", "mean_corruption_error", "relative_mce",
    "unnormalized_mean_corruption_error", "mean_flip_rate",
    "evaluate_robustness", "compare_to_baseline", "eps_key",
]
