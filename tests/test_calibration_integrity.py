"""Calibration files are verified whole (report and decision inside the digest, finite weights, old
versions refused), and a calibration refuses a run it was not fitted on: another model's weights,
another guidance scale or sample shape -- before the first model call of ltc.sample / ltc.Stepper."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ltc
import ltc.io as io
import ltc.zoo as zoo
from ltc.calibration.file import FILE_FORMAT
from ltc.policies import LTC

SCHEDULE = ltc.Schedule.vp("scaled_linear", spacing="trailing")
STEPS, GUIDANCE, LATENT = 10, 7.5, (4, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyUNet(torch.nn.Module):
    """A shape-agnostic eps model (one 3x3 convolution) that counts its calls."""

    def __init__(self, seed: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv.weight.copy_(0.05 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return self.conv(x) + 0.1 * x


def noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def quiet_calibrate(model, **kwargs):
    args = dict(sampler="ddim", steps=STEPS, noise=noise((6, *LATENT)), guidance_scale=GUIDANCE, report=False,
                verbose=False)
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ltc.calibrate(model, SCHEDULE, LTC(state="x"), **args)


@pytest.fixture(scope="module")
def fitted():
    unet = TinyUNet(0)
    model = ltc.Model(unet, "eps", "unet")
    return unet, model, quiet_calibrate(model)


def run(model, cal, *, guidance=GUIDANCE, shape=(3, *LATENT)):
    return ltc.sample(model, SCHEDULE, cal.policy(), sampler="ddim", steps=STEPS, noise=noise(shape, 1),
                      guidance_scale=guidance, progress=False)


# -- what a calibration was fitted on --------------------------------------------------------------
def test_the_calibration_records_what_it_was_fitted_on(fitted):
    unet, model, cal = fitted
    assert cal.fitted_on == {"guidance_scale": GUIDANCE, "sample_shape": list(LATENT),
                             "models": [{"name": "unet", "weights_sha256": io.model_fingerprint(unet), "tag": None}]}


def test_the_fitted_run_samples_without_a_warning(fitted):
    unet, model, cal = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = run(model, cal)
    assert x.shape == (3, *LATENT) and torch.isfinite(x).all()


def test_another_unet_is_refused_before_its_first_call(fitted):
    _, _, cal = fitted
    other = TinyUNet(1)
    with pytest.raises(ValueError, match=r"fitted on model 'unet' with weights sha256 .* 'unet' has other weights"):
        run(ltc.Model(other, "eps", "unet"), cal)
    assert other.calls == 0


@pytest.mark.parametrize("guidance", [None, 5.0])
def test_another_guidance_scale_is_refused_before_the_first_call(fitted, guidance):
    unet, model, cal = fitted
    before = unet.calls
    with pytest.raises(ValueError, match=rf"fitted with guidance_scale=7.5; this run uses guidance_scale={guidance}"):
        run(model, cal, guidance=guidance)
    assert unet.calls == before


def test_another_latent_shape_is_refused_before_the_first_call(fitted):
    unet, model, cal = fitted
    before = unet.calls
    with pytest.raises(ValueError, match=r"fitted on samples of shape \[4, 8, 8\] .* this run's are \[4, 16, 16\]"):
        run(model, cal, shape=(3, 4, 16, 16))
    assert unet.calls == before


def test_weights_changed_in_place_after_calibrating_are_refused(fitted):
    unet, model, cal = fitted
    changed = TinyUNet(0)
    wrapped = ltc.Model(changed, "eps", "unet")
    run(wrapped, cal)                               # the same weights: accepted (and their digest cached)
    with torch.no_grad():
        changed.conv.bias.add_(1e-3)
    with pytest.raises(ValueError, match="other weights"):
        run(wrapped, cal)


def test_the_checks_survive_save_and_load(fitted, tmp_path):
    unet, model, cal = fitted
    cal.save(tmp_path / "cal.safetensors")
    loaded = ltc.Calibration.load(tmp_path / "cal.safetensors")
    assert loaded.fitted_on == cal.fitted_on
    assert torch.equal(run(model, loaded), run(model, cal))
    with pytest.raises(ValueError, match="other weights"):
        run(ltc.Model(TinyUNet(2), "eps", "unet"), loaded)
    with pytest.raises(ValueError, match="guidance_scale"):
        run(model, loaded, guidance=None)


def test_the_stepper_checks_guidance_and_shape_and_given_models(fitted):
    unet, model, cal = fitted
    policy = cal.policy()
    ltc.Stepper(SCHEDULE, policy, sampler="ddim", steps=STEPS, noise=noise((2, *LATENT)), predictions="eps",
                guidance_scale=GUIDANCE)
    with pytest.raises(ValueError, match="guidance_scale"):
        ltc.Stepper(SCHEDULE, policy, sampler="ddim", steps=STEPS, noise=noise((2, *LATENT)), predictions="eps")
    with pytest.raises(ValueError, match="shape"):
        ltc.Stepper(SCHEDULE, policy, sampler="ddim", steps=STEPS, noise=noise((2, 4, 16, 16)), predictions="eps",
                    guidance_scale=GUIDANCE)
    with pytest.raises(ValueError, match="other weights"):
        ltc.Stepper(SCHEDULE, policy, sampler="ddim", steps=STEPS, noise=noise((2, *LATENT)),
                    predictions=[ltc.Model(TinyUNet(3), "eps", "unet")], guidance_scale=GUIDANCE)


def plain_eps(x, t):
    return 0.1 * x


def test_a_plain_callable_is_checked_by_its_tag_or_warned_about():
    untagged = quiet_calibrate(ltc.Model(plain_eps, "eps", "fn"))
    assert untagged.fitted_on["models"] == [{"name": "fn", "weights_sha256": None, "tag": None}]
    with pytest.warns(UserWarning, match="cannot tell whether this run's model 'fn' is the same"):
        run(ltc.Model(plain_eps, "eps", "fn"), untagged)
    tagged = quiet_calibrate(ltc.Model(plain_eps, "eps", "fn"), model_tag="eps-v3")
    with pytest.raises(ValueError, match=r"model tagged 'eps-v3' .* named 'fn'.*name='eps-v3'"):
        run(ltc.Model(plain_eps, "eps", "fn"), tagged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(ltc.Model(plain_eps, "eps", "eps-v3"), tagged)
    with pytest.raises(ValueError, match="model_tag must be"):
        quiet_calibrate(ltc.Model(plain_eps, "eps", "fn"), model_tag=["a", "b"])


def test_a_hand_made_calibration_without_a_record_warns(fitted):
    _, model, cal = fitted
    bare = ltc.Calibration(**{**{f: getattr(cal, f) for f in cal.__dataclass_fields__}, "fitted_on": {}})
    with pytest.warns(UserWarning, match="records nothing about the models"):
        run(model, bare)


def test_the_shipped_calibrations_know_their_zoo_models():
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    cal = ltc.Calibration.load(zoo.CALIBRATIONS_DIR / "demo_ltc.safetensors")
    assert cal.fitted_on == {"guidance_scale": 2.0, "sample_shape": [1, 16, 16], "models": [
        {"name": "unet_large", "weights_sha256": io.model_fingerprint(large.fn), "tag": None}]}
    both = ltc.Calibration.load(zoo.CALIBRATIONS_DIR / "demo_tstitch_ltc.safetensors")
    assert [m["weights_sha256"] for m in both.fitted_on["models"]] == [io.model_fingerprint(m.fn)
                                                                        for m in (small, large)]
    policy = LTC(state="x", weights=cal)
    kwargs = dict(steps=20, noise=noise((2, 1, 16, 16)), guidance_scale=2.0, model_kwargs={"y": torch.tensor(
        [10, 10, 3, 4])}, progress=False)
    ltc.sample([small, large], zoo.schedule("unet_large"), policy, **kwargs)   # Full calls the large model
    with pytest.raises(ValueError, match="fitted on model 'unet_large' .* model 'unet_small' has other weights"):
        ltc.sample([large, small], zoo.schedule("unet_large"), policy, **kwargs)


# -- the file: everything inside the digest ----------------------------------------------------------
@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "cal.safetensors"
    fitted[2].save(path)
    return path


def edit(path, *, tensors=None, meta=None, sign=False, version=None):
    """Rewrite a calibration file with edits; ``sign``: with a recomputed digest."""
    t, m = io.read_checked(path, FILE_FORMAT)
    t.update(tensors or {})
    m.update(meta or {})
    if version is not None:
        m["format_version"] = str(version)
    if sign:
        m["content_sha256"] = io.content_digest(t, m)
    save_file(t, str(path), metadata=m)


def test_an_edited_decision_is_refused(saved):
    edit(saved, meta={"accepted": "true"})
    with pytest.raises(ValueError, match="does not match its content_sha256"):
        ltc.Calibration.load(saved)


def test_an_edited_report_is_refused(fitted, tmp_path):
    unet, model, _ = fitted
    cal = quiet_calibrate(model, report=True, noise=noise((6, *LATENT)))
    path = tmp_path / "reported.safetensors"
    cal.save(path)
    report = json.loads(io.read_checked(path, FILE_FORMAT)[1]["report"])
    report["decision"]["accepted"] = not report["decision"]["accepted"]
    edit(path, meta={"report": json.dumps(report), "accepted": json.dumps(report["decision"]["accepted"])})
    with pytest.raises(ValueError, match="does not match its content_sha256"):
        ltc.Calibration.load(path)


def test_a_decision_contradicting_its_report_is_refused_even_when_signed(saved):
    flipped = json.dumps(not ltc.Calibration.load(saved).accepted if ltc.Calibration.load(saved).accepted
                         is not None else True)
    edit(saved, meta={"accepted": flipped}, sign=True)
    with pytest.raises(ValueError, match="contradicts the report"):
        ltc.Calibration.load(saved)


@pytest.mark.parametrize("name, value", [("weights", float("nan")), ("weights", float("inf")),
                                         ("gamma", float("nan")), ("grid_sigma", float("inf"))])
def test_non_finite_numbers_are_refused_when_loading(saved, name, value):
    t, _ = io.read_checked(saved, FILE_FORMAT)
    bad = t[name].clone()
    bad[-1] = value
    edit(saved, tensors={name: bad}, sign=True)
    with pytest.raises(ValueError, match=rf"\['{name}'\] hold NaN or Inf"):
        ltc.Calibration.load(saved)


def test_a_calibration_with_non_finite_weights_cannot_be_made(fitted):
    cal = fitted[2]
    weights = np.array(cal.weights, dtype=np.float64)
    weights[0] = np.nan
    with pytest.raises(ValueError, match=r"weights are not finite at extrapolated steps \[\d+\]"):
        ltc.Calibration(**{**{f: getattr(cal, f) for f in cal.__dataclass_fields__}, "weights": weights})


def test_a_version_1_file_is_refused_naming_both_versions(saved):
    t, m = io.read_checked(saved, FILE_FORMAT)
    m = {k: v for k, v in m.items() if k != "fitted_on"}
    m.update(format_version="1", content_sha256=io.tensors_digest(t))
    save_file(t, str(saved), metadata=m)
    with pytest.raises(ValueError, match=r"format version 1; this ltc .* reads version 3 only\. Recalibrate"):
        ltc.Calibration.load(saved)


def test_a_version_2_file_judged_by_the_old_rule_is_refused_naming_both_versions(saved):
    t, m = io.read_checked(saved, FILE_FORMAT)                  # as version 2 wrote it: no weights_fit, validation
    t = {k: v for k, v in t.items() if k != "weights_fit"}
    m = {k: v for k, v in m.items() if k not in ("validation", "content_sha256")}
    m["format_version"] = "2"
    m["content_sha256"] = io.content_digest(t, m)
    save_file(t, str(saved), metadata=m)
    with pytest.raises(ValueError, match=r"format version 2; this ltc .* reads version 3 only\. Recalibrate"):
        ltc.Calibration.load(saved)


def test_weights_that_contradict_the_decision_are_refused_even_when_signed(fitted, tmp_path):
    _, model, _ = fitted
    cal = quiet_calibrate(model, report=True, noise=noise((6, *LATENT)))
    path = tmp_path / "cal.safetensors"
    cal.save(path)
    t, _ = io.read_checked(path, FILE_FORMAT)
    edit(path, tensors={"weights": t["weights_fit"] + 0.5}, sign=True)   # neither the fit nor w = 1
    with pytest.raises(ValueError, match="contradict the report's decision"):
        ltc.Calibration.load(path)


@pytest.mark.parametrize("validation", [{"held_out": "maybe", "fit_noises": 3, "judged_noises": 3},
                                        {"held_out": "split", "fit_noises": -1, "judged_noises": 3}, []])
def test_a_malformed_validation_record_is_refused(saved, validation):
    edit(saved, meta={"validation": json.dumps(validation)}, sign=True)
    with pytest.raises(ValueError, match="metadata validation must be"):
        ltc.Calibration.load(saved)


def test_save_is_atomic_and_honours_the_umask(fitted, tmp_path):
    old = os.umask(0o022)
    try:
        fitted[2].save(tmp_path / "cal.safetensors")
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["cal.safetensors"]
    assert (tmp_path / "cal.safetensors").stat().st_mode & 0o777 == 0o644


def test_the_models_the_plan_calls_are_the_ones_checked(fitted):
    unet, model, cal = fitted
    other = ltc.Model(TinyUNet(5), "eps", "other")
    kwargs = dict(sampler="ddim", steps=STEPS, noise=noise((2, *LATENT)), guidance_scale=GUIDANCE, progress=False)
    ltc.sample([other, model], SCHEDULE, cal.policy(), **kwargs)          # Full calls the last model: the fitted one
    with pytest.raises(ValueError, match="fitted on model 'unet' .* model 'other' has other weights"):
        ltc.sample([model, other], SCHEDULE, cal.policy(), **kwargs)


@pytest.mark.gpu
def test_cuda_graph_runs_check_the_calibration_before_capture(fitted):
    import copy
    unet, _, cal = fitted
    on_gpu = copy.deepcopy(unet).cuda()
    assert io.model_fingerprint(on_gpu) == io.model_fingerprint(unet)       # the same weights on another device
    kwargs = dict(sampler="ddim", steps=STEPS, noise=noise((2, *LATENT)).cuda(), guidance_scale=GUIDANCE,
                  progress=False, graph=True)
    x = ltc.sample(ltc.Model(on_gpu, "eps", "unet"), SCHEDULE, cal.policy(), **kwargs)
    assert x.is_cuda and torch.isfinite(x).all()
    other = TinyUNet(1).cuda()
    with pytest.raises(ValueError, match="other weights"):
        ltc.sample(ltc.Model(other, "eps", "unet"), SCHEDULE, cal.policy(), **kwargs)
    assert other.calls == 0
    with pytest.raises(ValueError, match="guidance_scale"):
        ltc.sample(ltc.Model(on_gpu, "eps", "unet"), SCHEDULE, cal.policy(), **{**kwargs, "guidance_scale": None})
