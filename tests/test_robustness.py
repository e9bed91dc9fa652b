"""Tests for noisystudent.robustness: corruptions, perturbations, FGSM, metrics, evaluation."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from noisystudent.robustness import (
    CORRUPTIONS,
    PERTURBATIONS,
    compare_to_baseline,
    corrupt,
    corrupt_dataset,
    corruption_error,
    derive_seed,
    evaluate_robustness,
    fgsm_accuracy,
    fgsm_attack,
    flip_rate,
    mean_corruption_error,
    mean_flip_rate,
    perturbation_sequence,
    predict,
    relative_corruption_error,
    relative_mce,
    unnormalized_mean_corruption_error,
)
from noisystudent.robustness import corruptions as corruptions_module

needs_corruptions = pytest.mark.skipif(
    importlib.util.find_spec("imagecorruptions") is None, reason="robustness extra not installed")

# Corruptions that draw random numbers; the others are deterministic functions of the image.
RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
                      "snow", "frost", "fog", "elastic_transform")


def _image(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """A textured test image (gradient + checkerboard + noise): every corruption visibly changes it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    checker = ((np.arange(size)[:, None] // 2 + np.arange(size) // 2) % 2)
    base = 60 + 120 * (0.5 * xx + 0.3 * yy) + 40 * checker
    img = base[..., None] * np.array([1.0, 0.8, 0.6])[:channels] + rng.normal(0, 10, (size, size, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- corruptions

@needs_corruptions
@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_shape_dtype_changes_and_deterministic(name, size):
    rgb, gray = _image(size, 3), _image(size, 1)
    for image in (rgb, gray, gray[..., 0]):
        for severity in (1, 2, 3, 4, 5):
            out = corrupt(image, name, severity, seed=11)
            assert out.shape == image.shape and out.dtype == np.uint8
            assert not np.array_equal(out, image), f"{name} s{severity} left a {image.shape} image unchanged"
        assert np.array_equal(corrupt(image, name, 3, seed=5), corrupt(image, name, 3, seed=5))


@needs_corruptions
@pytest.mark.parametrize("name", RANDOM_CORRUPTIONS)
def test_seed_is_used_and_global_rng_is_left_alone(name):
    image = _image(32, 3)
    assert not np.array_equal(corrupt(image, name, 3, seed=1), corrupt(image, name, 3, seed=2))
    np.random.seed(123)
    before = np.random.get_state()
    first = corrupt(image, name, 3, seed=1)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    np.random.seed(456)  # a different global state must not leak into the result
    assert np.array_equal(corrupt(image, name, 3, seed=1), first)


@needs_corruptions
def test_invalid_arguments_name_the_allowed_values():
    image = _image(32, 3)
    with pytest.raises(ValueError, match="gaussian_noise.*jpeg_compression"):
        corrupt(image, "speckle", 1, seed=0)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"\(1, 2, 3, 4, 5\)"):
            corrupt(image, "fog", bad, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1, seed=0)


@needs_corruptions
def test_reimplemented_glass_blur_and_fog_match_the_package_bit_for_bit(monkeypatch):
    """Undo the two incompatibilities in the package itself and compare its output with ours."""
    from skimage import filters

    package = corruptions_module._package()
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    monkeypatch.setattr(package, "gaussian", lambda img, sigma, multichannel=False, **kw: filters.gaussian(
        img, sigma=sigma, channel_axis=-1 if multichannel else None, **kw))
    from PIL import Image

    image = Image.fromarray(_image(37, 3))  # odd, non power-of-two size
    for severity in (1, 3, 5):
        for ours, theirs in ((corruptions_module._glass_blur, package.glass_blur),
                             (corruptions_module._fog, package.fog)):
            np.random.seed(7)
            expected = theirs(image, severity)
            np.random.seed(7)
            assert np.array_equal(ours(image, severity), expected)


@needs_corruptions
def test_impulse_noise_flips_the_reference_fraction_of_values():
    image = np.full((64, 64, 3), 128, np.uint8)  # 64 px: no resampling involved
    for severity, amount in ((1, 0.03), (5, 0.27)):
        changed = np.mean(corrupt(image, "impulse_noise", severity, seed=3) != image)
        assert 0.8 * amount < changed < 1.2 * amount


@needs_corruptions
def test_small_images_keep_full_noise_strength():
    """8 px images are upsampled 4x; sub-sampling back (not averaging 16 pixels) keeps the noise std."""
    image = np.full((8, 8), 128, np.uint8)
    diff = corrupt(image, "gaussian_noise", 1, seed=0).astype(float) - image
    assert 0.5 * 0.08 * 255 < diff.std() < 1.5 * 0.08 * 255  # severity 1: sigma = 0.08


@needs_corruptions
def test_corrupt_dataset_seeds_subsets_and_cache(tmp_path, monkeypatch):
    images = np.stack([_image(8, 3, seed=i) for i in range(4)])
    out = corrupt_dataset(images, ["gaussian_noise", "fog"], [1, 2], seed=9, cache_dir=tmp_path)
    assert set(out) == {("gaussian_noise", 1), ("gaussian_noise", 2), ("fog", 1), ("fog", 2)}
    for i in range(4):  # per-image seed from (seed, name, severity, index)
        assert np.array_equal(out[("fog", 2)][i], corrupt(images[i], "fog", 2, derive_seed(9, "fog", 2, i)))
    assert not np.array_equal(out[("fog", 2)][0], out[("fog", 2)][1])
    # a subset reuses the seeds its images have in the full set
    sub = corrupt_dataset(images[[1, 3]], "fog", 2, seed=9, indices=[1, 3])
    assert np.array_equal(sub[("fog", 2)], out[("fog", 2)][[1, 3]])

    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 4 and all(f.endswith(".npy") for f in files)  # no temp files left behind

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(corruptions_module, "corrupt", fail)
    again = corrupt_dataset(images, ["gaussian_noise", "fog"], [1, 2], seed=9, cache_dir=tmp_path)
    for key in out:
        assert np.array_equal(again[key], out[key])
    with pytest.raises(AssertionError, match="recomputed"):  # the seed is part of the key
        corrupt_dataset(images, "fog", 1, seed=10, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):  # so are the images
        corrupt_dataset(images[::-1], "fog", 1, seed=9, cache_dir=tmp_path)
    # a damaged cache file is recomputed, not trusted
    monkeypatch.undo()
    victim = next(tmp_path.glob("fog-s1-*.npy"))
    victim.write_bytes(b"not a numpy file")
    repaired = corrupt_dataset(images, "fog", 1, seed=9, cache_dir=tmp_path)
    assert np.array_equal(repaired[("fog", 1)], out[("fog", 1)])


@pytest.mark.slow
@needs_corruptions
def test_all_corruptions_at_imagenet_resolution():
    image = _image(224, 3)
    for name in CORRUPTIONS:
        out = corrupt(image, name, 5, seed=0)
        assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)


# --------------------------------------------------------------------------------- perturbations

@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbation_sequence_shapes_and_steps(kind):
    rgb = _image(16, 3)
    seq = perturbation_sequence(rgb, kind, length=6, seed=1)
    assert seq.shape == (6, 16, 16, 3) and seq.dtype == np.uint8
    assert perturbation_sequence(rgb[..., 0], kind, length=4).shape == (4, 16, 16)
    clean_at = 0 if kind == "gaussian_noise" else (6 - 1) // 2  # noise starts clean, others are centred
    assert np.array_equal(seq[clean_at], rgb)
    assert all(not np.array_equal(seq[t], seq[t + 1]) for t in range(5))
    assert np.array_equal(perturbation_sequence(rgb, kind, 6, seed=1), seq)


def test_translate_moves_one_pixel_per_frame():
    image = _image(16, 3)
    seq = perturbation_sequence(image, "translate", length=3)  # offsets -1, 0, +1
    assert np.array_equal(seq[2][:, 1:], image[:, :-1]) and np.array_equal(seq[0][:, :-1], image[:, 1:])


def test_flip_rate_on_hand_made_predictions():
    preds = np.array([[0, 1, 1, 1, 1],
                      [3, 3, 4, 3, 3]])
    # consecutive frames: row 0 flips once, row 1 twice -> 3 of 8 comparisons
    assert flip_rate(preds, "translate") == pytest.approx(3 / 8)
    # noise: each frame vs the first -> row 0 four times, row 1 once -> 5 of 8
    assert flip_rate(preds, "gaussian_noise") == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="translate"):
        flip_rate(preds, "zoom")
    with pytest.raises(ValueError, match="shape"):
        flip_rate(preds[:, :1], "translate")


# ------------------------------------------------------------------------------------------ FGSM

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class _NegateInTrainMode(nn.Module):
    def forward(self, logits):
        return -logits if self.training else logits


@pytest.fixture(scope="module")
def tiny():
    """A linear classifier (with dropout, so eval mode matters) trained for a few steps on
    "darker vs brighter" 8x8 images: separable, yet within reach of small FGSM steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 2
    pixels = 0.45 + 0.1 * labels.view(-1, 1, 1, 1) + 0.04 * torch.randn(96, 3, 8, 8, generator=g)
    images_u8 = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)  # NCHW uint8
    x = images_u8.float() / 255
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model((x - m) / s), labels).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        clean = (model((x - m) / s).argmax(1) == labels).float().mean().item()
    return model, images_u8, x, labels, clean


def test_fgsm_eps_zero_is_clean_accuracy_and_accuracy_falls(tiny):
    model, images_u8, x, labels, clean = tiny
    assert clean >= 0.95  # the task is learnt, so a drop is meaningful
    # In training mode this wrapper negates the logits, so any forward pass that is not in eval
    # mode gets (almost) everything wrong; fgsm must switch to eval and restore the modes after.
    wrapped = nn.Sequential(model, _NegateInTrainMode()).train()
    eps = [0.0, 1 / 255, 4 / 255, 0.03, 0.06, 0.1, 0.2]
    acc = fgsm_accuracy(wrapped, x, labels, eps, MEAN, STD, batch_size=40)
    assert wrapped.training and model[1].training
    model.eval()
    assert list(acc) == eps
    assert acc[0.0] == clean
    values = list(acc.values())
    assert all(a >= b for a, b in zip(values, values[1:])), values
    assert values[-1] <= 0.1
    # uint8 input is the same pixels, scaled per batch
    assert fgsm_accuracy(model, images_u8, labels.numpy(), eps, MEAN, STD, batch_size=40) == acc


def test_fgsm_attack_is_in_pixel_space_and_clamped(tiny):
    model, _, x, labels, _ = tiny
    eps = 0.03
    adv = fgsm_attack(model, x, labels, eps, MEAN, STD)
    delta = (adv - x).abs()
    assert adv.min() >= 0 and adv.max() <= 1
    assert delta.max() <= eps + 1e-6
    inside = (x > eps) & (x < 1 - eps)  # no clamping there: every pixel moved by exactly eps
    assert torch.allclose(delta[inside], torch.full_like(delta[inside], eps), atol=1e-6)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        loss = lambda z: nn.functional.cross_entropy(model((z - m) / s), labels).item()  # noqa: E731
        assert loss(adv) > loss(x)
    with pytest.raises(ValueError, match="eps"):
        fgsm_accuracy(model, x, labels, [-0.1], MEAN, STD)


# --------------------------------------------------------------------------------------- metrics

ERRORS = {"a": [0.2, 0.4], "b": [0.5, 0.5]}
BASE = {"a": [0.4, 0.6], "b": [0.25, 0.25]}


def test_corruption_errors_by_hand():
    assert corruption_error(ERRORS["a"], BASE["a"]) == pytest.approx(0.6 / 1.0)
    mce, per = mean_corruption_error(ERRORS, BASE)
    assert per == pytest.approx({"a": 0.6, "b": 2.0}) and mce == pytest.approx(1.3)
    # clean errors 0.1 (model) and 0.2 (baseline)
    assert relative_corruption_error(ERRORS["b"], 0.1, BASE["b"], 0.2) == pytest.approx(0.8 / 0.1)
    rmce, rper = relative_mce(ERRORS, 0.1, BASE, 0.2)
    assert rper == pytest.approx({"a": 0.4 / 0.6, "b": 8.0}) and rmce == pytest.approx((0.4 / 0.6 + 8.0) / 2)
    assert unnormalized_mean_corruption_error(ERRORS) == pytest.approx((0.3 + 0.5) / 2)
    mfr, fr = mean_flip_rate({"translate": 0.1, "gaussian_noise": 0.3},
                             {"translate": 0.2, "gaussian_noise": 0.2, "rotate": 0.5})  # extra kinds are ignored
    assert fr == pytest.approx({"translate": 0.5, "gaussian_noise": 1.5}) and mfr == pytest.approx(1.0)


def test_undefined_and_malformed_metrics():
    with pytest.warns(RuntimeWarning, match="b"):
        mce, per = mean_corruption_error(ERRORS, {"a": BASE["a"], "b": [0.0, 0.0]})
    assert per["a"] == pytest.approx(0.6) and math.isnan(per["b"]) and math.isnan(mce)
    with pytest.warns(RuntimeWarning):  # the baseline got *better* under corruption: rCE undefined
        assert math.isnan(relative_corruption_error([0.3, 0.3], 0.1, [0.1, 0.1], 0.2))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(mean_flip_rate({"scale": 0.1}, {"scale": 0.0})[0])
    with pytest.raises(ValueError, match="fractions"):
        corruption_error([20.0, 40.0], [40.0, 60.0])  # percentages instead of fractions
    with pytest.raises(ValueError, match="severities"):
        corruption_error([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="c"):
        mean_corruption_error({"c": [0.1]}, BASE)


# ------------------------------------------------------------------------------------ evaluation

@needs_corruptions
def test_evaluate_robustness_and_compare_to_baseline(tiny, tmp_path, monkeypatch):
    model, images_u8, _, labels, _ = tiny
    images = images_u8.permute(0, 2, 3, 1).numpy()[:16]  # NHWC uint8
    labels = labels.numpy()[:16]
    kwargs = dict(mean=MEAN, std=STD, corruptions=("gaussian_noise", "contrast"), severities=(1, 5),
                  fgsm_eps=(2 / 255, 0.1), perturbations=("translate", "gaussian_noise"),
                  perturbation_length=3, max_images=10, cache_dir=tmp_path, progress=False, batch_size=7)
    result = evaluate_robustness(model, images, labels, **kwargs)
    json.dumps(result, allow_nan=False)
    assert result["num_images"] == 10
    assert set(result["corruptions"]) == {"gaussian_noise", "contrast"}
    assert set(result["corruptions"]["contrast"]) == {"1", "5"}
    assert list(result["fgsm"]) == ["0.00784", "0.10000"]
    assert result["fgsm"]["0.10000"] < result["clean_accuracy"]
    for name, accs in result["corruptions"].items():
        assert result["corruption_error"][name] == pytest.approx([1 - accs["1"], 1 - accs["5"]])
    errs = result["corruption_error"]
    expected_unnormalized = np.mean([np.mean(v) for v in errs.values()])
    assert result["mean_corruption_error_unnormalized"] == pytest.approx(expected_unnormalized)
    assert all(0 <= v <= 1 for v in result["flip_rate"].values())
    # deterministic, and the second run reads the corruption cache instead of corrupting again
    assert len(list(tmp_path.glob("*.npy"))) == 4
    with monkeypatch.context() as patch:
        patch.setattr(corruptions_module, "corrupt", lambda *a, **k: pytest.fail("cache not used"))
        assert evaluate_robustness(model, images, labels, **kwargs) == result

    baseline = {"clean_accuracy": 0.8,
                "corruption_error": {"gaussian_noise": [0.5, 0.5], "contrast": [0.25, 0.75]},
                "flip_rate": {"translate": 0.5, "gaussian_noise": 0.25}}
    report = compare_to_baseline(result, baseline)
    json.dumps(report, allow_nan=False)
    expected_ce = {c: sum(e) / 1.0 for c, e in errs.items()}
    assert report["CE"] == pytest.approx(expected_ce)
    assert report["mCE"] == pytest.approx(np.mean(list(expected_ce.values())))
    assert report["FR_ratio"] == pytest.approx({"translate": result["flip_rate"]["translate"] / 0.5,
                                                "gaussian_noise": result["flip_rate"]["gaussian_noise"] / 0.25})
    clean_err = 1 - result["clean_accuracy"]
    # baseline degradation: (0.5 - 0.2) * 2 = 0.6 for both corruptions
    expected_rce = {c: (sum(e) - 2 * clean_err) / 0.6 for c, e in errs.items()}
    assert report["rCE"] == pytest.approx(expected_rce)
    assert report["relative_mCE"] == pytest.approx(np.mean(list(expected_rce.values())))
    assert report["mFR"] == pytest.approx(np.mean(list(report["FR_ratio"].values())))

    other = evaluate_robustness(model, images, labels, **{**kwargs, "max_images": 8, "fgsm_eps": (),
                                                          "perturbations": ()})
    with pytest.raises(ValueError, match="different data"):
        compare_to_baseline(other, result)


def test_predict_matches_a_direct_forward_pass(tiny):
    model, images_u8, x, _, _ = tiny
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = model((x - m) / s).argmax(1).numpy()
    wrapped = nn.Sequential(model, _NegateInTrainMode()).train()
    nhwc = images_u8.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(predict(wrapped, nhwc, MEAN, STD, batch_size=13), direct)
    assert wrapped.training
