"""The model zoo: data, checked loading of the shipped weights, metrics, and in-distribution samples."""
import importlib.util
import json
import math
import shutil

import pytest
import torch

import ltc
import ltc.zoo as zoo
from ltc.policies import TStitch
from ltc.zoo import metrics as M
from ltc.io import RESERVED, read_checked, write_checked
from ltc.zoo.loader import WEIGHTS_FORMAT
from ltc.zoo.train import SCHEDULE

needs_torchmetrics = pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None,
                                        reason="torchmetrics is not installed (the 'metrics' extra)")


# -- data ------------------------------------------------------------------------------------
def test_digits_splits_shapes_and_range():
    x, y = zoo.digits("train")
    xh, yh = zoo.digits("heldout")
    assert x.shape == (1500, 1, 16, 16) and xh.shape == (297, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10)) == set(yh.tolist())
    images, labels = zoo.raw_digits("all")
    assert torch.equal(zoo.to_model_space(images[1500:]), xh) and torch.equal(labels[1500:], yh)


def test_upsampling_keeps_constant_images_constant():
    x = zoo.to_model_space(torch.full((2, 8, 8), 8, dtype=torch.uint8))
    assert torch.equal(x, torch.zeros(2, 1, 16, 16))


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        zoo.digits("test")


# -- loading ---------------------------------------------------------------------------------
def test_names_lists_denoisers_small_to_large_and_the_classifier():
    names = zoo.names()
    assert names == ["unet_tiny", "unet_small", "unet_large"]
    macs = [int(zoo.info(n)["macs_per_sample"]) for n in names]
    assert macs == sorted(macs) and len(set(macs)) == 3
    assert zoo.names("classifier") == ["classifier"]


def test_large_model_costs_5_to_10_times_the_small_one():
    ratio = zoo.load("unet_large").fn.macs_per_sample / zoo.load("unet_small").fn.macs_per_sample
    assert 5 <= ratio <= 10


def test_the_tstitch_pair_is_the_tiny_and_the_large_model_10_to_25_times_apart():
    """The paper's DiT-S costs ~1/20 of DiT-XL; the pair that shows T-Stitch is ~1/16 apart."""
    small, large = (zoo.load(n) for n in zoo.TSTITCH_PAIR)
    assert zoo.TSTITCH_PAIR == ("unet_tiny", "unet_large")
    assert 10 <= large.fn.macs_per_sample / small.fn.macs_per_sample <= 25
    assert zoo.info("unet_tiny")["schedule"] == zoo.info("unet_large")["schedule"]


def test_the_tiny_model_denoises_held_out_digits_worse_than_the_large_one_at_every_t():
    """The training objective on the held-out digits (same noises for both): the tiny model's error is
    above the large one's at every t and by more than 4% on average (6% measured; unet_small: 2%)."""
    abar = torch.as_tensor(SCHEDULE.alphas_cumprod, dtype=torch.float32)
    x0, y = zoo.digits("heldout")
    losses = {}
    for name in zoo.TSTITCH_PAIR:
        model, losses[name] = zoo.load(name), []
        for t in range(50, 1000, 100):
            eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
            xt = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
            losses[name].append(float((model(xt, torch.full((x0.shape[0],), float(t)), y=y) - eps).pow(2).mean()))
    tiny, large = (torch.tensor(losses[n]) for n in zoo.TSTITCH_PAIR)
    assert (tiny > large).all() and tiny.mean() > 1.04 * large.mean()


def test_weights_record_their_training_and_data():
    for name in zoo.names() + ["classifier"]:
        meta = zoo.info(name)
        assert meta["data_digest"] == zoo.data_digest()
        assert meta["training_command"].startswith("python -m ltc.zoo.train")
        assert meta["architecture"]["kind"] in ("unet", "classifier")
    assert zoo.info("unet_large")["schedule"] == zoo.info("unet_small")["schedule"]


def test_loaded_denoiser_is_an_eps_model_without_autograd():
    model = zoo.load("unet_small")
    assert isinstance(model, ltc.Model) and model.prediction == "eps" and model.name == "unet_small"
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    out = model(x, torch.full((4,), 500.0), y=torch.tensor([0, 1, 2, 10]))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert not model.fn.net.training


def test_half_batch_labels_label_the_conditional_half_under_guidance():
    model = zoo.load("unet_small")
    x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 300.0)
    doubled = model(x, t, y=torch.tensor([3, 7]))
    explicit = model(x, t, y=torch.tensor([10, 10, 3, 7]))
    assert torch.equal(doubled, explicit)
    with pytest.raises(ValueError, match="y must have shape"):
        model(x, t, y=torch.tensor([1, 2, 3]))


def test_schedule_is_the_training_schedule():
    schedule = zoo.schedule("unet_large")
    assert schedule.config() == zoo.info("unet_large")["schedule"]


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError, match=r"no zoo model named 'unet_huge'.*unet_large"):
        zoo.load("unet_huge")


def test_classifier_is_not_a_denoiser():
    with pytest.raises(ValueError, match="not a denoiser"):
        zoo.load("classifier")


@pytest.fixture
def copy_of_small(tmp_path):
    shutil.copy(zoo.WEIGHTS_DIR / "unet_small.safetensors", tmp_path / "unet_small.safetensors")
    return tmp_path, tmp_path / "unet_small.safetensors"


def test_truncated_file_is_refused_naming_the_path(copy_of_small):
    directory, path = copy_of_small
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"unet_small\.safetensors is not a readable safetensors file"):
        zoo.load("unet_small", directory=directory)


def test_flipped_byte_is_refused(copy_of_small):
    directory, path = copy_of_small
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        zoo.load("unet_small", directory=directory)


def test_text_file_is_refused(copy_of_small):
    directory, path = copy_of_small
    path.write_text("not weights")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        zoo.load("unet_small", directory=directory)


def _rewrite(path, edit_tensors=None, edit_meta=None):
    """Edit a weight file and write it again with a valid digest (as a well-meaning tool would)."""
    tensors, meta = read_checked(path, WEIGHTS_FORMAT)
    meta = {k: v for k, v in meta.items() if k not in RESERVED}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    write_checked(path, tensors, meta, WEIGHTS_FORMAT)


def test_missing_tensor_is_named(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, lambda t: t.pop("mid.conv1.weight"))
    with pytest.raises(ValueError, match="lacks tensor 'mid.conv1.weight'"):
        zoo.load("unet_small", directory=directory)


def test_extra_tensor_is_named(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, lambda t: t.update(stray=torch.zeros(3)))
    with pytest.raises(ValueError, match="tensor 'stray' that its architecture does not use"):
        zoo.load("unet_small", directory=directory)


def test_misshaped_tensor_is_named(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, lambda t: t.update({"conv_out.bias": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"tensor 'conv_out.bias' has shape \(2,\)"):
        zoo.load("unet_small", directory=directory)


def test_integer_tensor_is_refused(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, lambda t: t.update({"conv_out.bias": torch.zeros(1, dtype=torch.int32)}))
    with pytest.raises(ValueError, match="conv_out.bias' has dtype torch.int32"):
        zoo.load("unet_small", directory=directory)


def test_missing_metadata_field_is_named(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, edit_meta=lambda m: m.pop("prediction"))
    with pytest.raises(ValueError, match="metadata lacks 'prediction'"):
        zoo.load("unet_small", directory=directory)


def test_architecture_contradicting_the_tensors_is_refused(copy_of_small):
    directory, path = copy_of_small
    _rewrite(path, edit_meta=lambda m: m.update(architecture=json.dumps(
        {**json.loads(m["architecture"]), "channels": 24})))
    with pytest.raises(ValueError, match="has shape .* the architecture expects"):
        zoo.load("unet_small", directory=directory)


# -- metrics ---------------------------------------------------------------------------------
@needs_torchmetrics
def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    a = signs * torch.tensor([1.0, 2.0]) + torch.tensor([0.5, 0.0])
    b = signs * torch.tensor([3.0, 0.5]) + torch.tensor([0.0, 1.0])
    var_a = torch.tensor([1.0, 4.0], dtype=torch.float64) * 4 / 3
    var_b = torch.tensor([9.0, 0.25], dtype=torch.float64) * 4 / 3
    expected = 0.5 ** 2 + 1.0 + float((var_a.sqrt() - var_b.sqrt()).pow(2).sum())
    assert M.frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-12)
    assert M.frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-12)


@needs_torchmetrics
def test_frechet_distance_is_invariant_to_a_common_rotation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64)
    b = torch.randn(60, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    assert M.frechet_distance_from_features(a @ q, b @ q) == pytest.approx(
        M.frechet_distance_from_features(a, b), rel=1e-9)


def hand_written_frechet_distance(feat_a, feat_b):
    """The Frechet distance ltc computed by hand before it used torchmetrics (kept as the reference):
    tr (S_a^{1/2} S_b S_a^{1/2})^{1/2} by two symmetric eigendecompositions, in float64."""
    a, b = feat_a.double(), feat_b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def round_off_bound(feat_a, feat_b):
    """How far two correct float64 computations of FD may differ: 1e-9 relative when both covariances
    have full rank (two backward-stable eigensolvers of well-conditioned 64x64 matrices; observed
    ~1e-12), plus, for each of the k exactly-zero eigenvalues of S_a S_b that a covariance of
    n <= d samples has, 2 sqrt(eps_64 lambda_max): each such eigenvalue comes out as round-off of
    size eps lambda_max, and its square root enters tr (S_a S_b)^{1/2}, counted twice in FD."""
    cov_a, cov_b = torch.cov(feat_a.double().T), torch.cov(feat_b.double().T)
    d = feat_a.shape[1]
    null = max(0, d - (min(feat_a.shape[0], feat_b.shape[0]) - 1))
    lam_max = float(torch.linalg.eigvals(cov_a @ cov_b).real.max())
    return null * 2 * math.sqrt(torch.finfo(torch.float64).eps * lam_max)


@needs_torchmetrics
@pytest.mark.parametrize("samples", [297, 50], ids=["full-rank", "50-samples"])
def test_torchmetrics_frechet_distance_agrees_with_the_hand_written_formula(samples):
    """The zoo FD (torchmetrics, zoo classifier features) is the number ltc computed by hand before,
    to the round-off of the two methods (``round_off_bound``), on the zoo's own digits."""
    x = zoo.digits("heldout")[0][:samples]
    feat_x, feat_all = M.features(x), M.data_features()
    expected = hand_written_frechet_distance(feat_x, feat_all)
    tolerance = 1e-9 * expected + round_off_bound(feat_x, feat_all)
    assert abs(M.frechet_distance(x) - expected) <= tolerance
    assert abs(M.frechet_distance_from_features(feat_x, feat_all) - expected) <= tolerance
    assert (samples == 297) == (tolerance < 1e-8)  # the full-rank case is held to 1e-9 relative


@needs_torchmetrics
def test_frechet_distance_is_torchmetrics_with_the_zoo_classifier():
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = M.frechet_metric()
    assert isinstance(metric, FrechetInceptionDistance) and isinstance(metric.inception, M.ClassifierFeatures)
    assert metric.real_features_num_samples == zoo.digits("all")[0].shape[0]


def test_psnr_and_rmse_of_a_constant_offset():
    ref = torch.zeros(3, 1, 16, 16, dtype=torch.float64)
    out = M.psnr_rmse(ref + 0.2, ref)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-9) and out["rmse"] == pytest.approx(0.2, abs=1e-7)
    assert M.psnr_rmse(ref, ref) == {"psnr": float("inf"), "rmse": 0.0}


def test_classifier_is_accurate_on_held_out_digits():
    x, y = zoo.digits("heldout")
    agreement = M.confidence(x, y)["agreement"]
    assert agreement >= 0.95
    assert agreement == pytest.approx(float(zoo.load_classifier().metadata["heldout_accuracy"]), abs=1e-4)


@needs_torchmetrics
def test_metrics_refuse_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[B, 1, 16, 16\]"):
        M.frechet_distance(torch.zeros(4, 16, 16))
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="same d"):
        M.frechet_distance_from_features(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr_rmse(torch.zeros(2, 1, 16, 16), torch.zeros(3, 1, 16, 16))


# -- sampling --------------------------------------------------------------------------------
class Counting:
    def __init__(self, model):
        self.model, self.prediction, self.name, self.calls = model, model.prediction, model.name, 0

    def __call__(self, x, t, y=None):
        self.calls += x.shape[0] > 2  # the compatibility probe runs on one sample (two under guidance)
        return self.model(x, t, y=y)


def confidence_threshold():
    """Mean confidence on held-out digits minus 0.05 (about 0.93; pure noise scores about 0.88)."""
    return M.confidence(zoo.digits("heldout")[0])["confidence"] - 0.05


def test_stitched_zoo_models_switch_exactly_and_sample_real_digits():
    torch.manual_seed(0)
    small, large = Counting(zoo.load("unet_small")), Counting(zoo.load("unet_large"))
    labels = torch.arange(30) % 10
    noise = torch.randn(30, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    x, info = ltc.sample([small, large], zoo.schedule("unet_large"), TStitch(0.4), steps=10, noise=noise,
                         model_kwargs={"y": labels}, guidance_scale=2.0, progress=False, return_info=True)
    assert (small.calls, large.calls) == (4, 6) and info.nfe_per_model == [4, 6]
    score = M.confidence(x, labels)
    threshold = confidence_threshold()
    assert score["confidence"] >= threshold and score["agreement"] >= 0.8
    noise_score = M.confidence(noise.clamp(-1, 1), labels)  # the check can fail
    assert noise_score["confidence"] < threshold and noise_score["agreement"] < 0.8


def test_stitching_models_of_different_prediction_types_is_refused_before_sampling():
    small = Counting(zoo.load("unet_small"))
    large = ltc.Model(Counting(zoo.load("unet_large")), "v", "large_v")
    with pytest.raises(ValueError, match="prediction type"):
        ltc.sample([small, large], zoo.schedule("unet_large"), TStitch(0.5), steps=4,
                   shape=(3, 1, 16, 16), progress=False)
    assert small.calls == 0
