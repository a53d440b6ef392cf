"""ltc.io: whole-file verification (digest over tensors AND metadata, pins of the shipped files),
clear errors naming the path, atomic writes owned by their writer, and model weight fingerprints."""
import copy
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import ltc
import ltc.io as io
import ltc.zoo as zoo
from ltc.calibration import Calibration
from ltc.calibration.file import FILE_FORMAT as CALIBRATION_FILE
from ltc.io import FileFormat, FormatError, read_checked, write_checked
from ltc.zoo.loader import WEIGHTS_FORMAT

FMT = FileFormat("ltc-test", 3, tensors=("a", "b"), metadata=("note",), regenerate="Remake it with make_test().")
TENSORS = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    write_checked(path, TENSORS, {"note": "hello"}, FMT)
    return path


def resave(src, dst, tensors=None, meta_change=None, drop_meta=()):
    """Re-serialise a file with edits, keeping its stored digest (an edit that forgets the digest)."""
    t, meta = read_checked(src, FMT)
    meta = {k: v for k, v in {**meta, **(meta_change or {})}.items() if k not in drop_meta}
    save_file(tensors if tensors is not None else t, str(dst), metadata=meta)
    return dst


# -- the digest covers tensors and metadata ------------------------------------------------------
def test_round_trip_and_the_digest_covers_every_metadata_field(good, tmp_path):
    tensors, meta = read_checked(good, FMT)
    assert all(torch.equal(tensors[k], TENSORS[k]) for k in TENSORS)
    assert meta["format"] == "ltc-test" and meta["format_version"] == "3" and meta["note"] == "hello"
    assert meta["content_sha256"] == io.content_digest(tensors, meta)
    with pytest.raises(ValueError, match="does not match its content_sha256"):
        read_checked(resave(good, tmp_path / "edited.safetensors", meta_change={"note": "hellp"}), FMT)
    swapped = {"a": TENSORS["a"], "b": torch.tensor([2, 1], dtype=torch.int64)}
    with pytest.raises(ValueError, match="does not match its content_sha256"):
        read_checked(resave(good, tmp_path / "swapped.safetensors", tensors=swapped), FMT)


def test_a_flipped_tensor_byte_is_refused(good):
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0x01
    good.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"good\.safetensors is corrupted or was modified"):
        read_checked(good, FMT)


def test_the_digest_separates_fields_unambiguously():
    meta = {"x": "ab"}
    assert io.content_digest({}, meta) != io.content_digest({}, {"xa": "b"})
    assert io.content_digest({"a": torch.zeros(2)}, {}) != io.content_digest({"a": torch.zeros(1, 2)}, {})
    assert io.content_digest({"a": torch.zeros(2)}, {}) != io.content_digest({"a": torch.zeros(2).double()}, {})


@pytest.mark.parametrize("damage, match", [
    (lambda raw: raw[: len(raw) // 2], "not a readable safetensors file"),
    (lambda raw: raw + b"\0\0", "not a readable safetensors file"),
    (lambda raw: raw[:5], "not a readable safetensors file"),
    (lambda raw: b"not a safetensors file at all", "not a readable safetensors file"),
])
def test_damaged_bytes_are_refused_naming_the_path(good, damage, match):
    good.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ValueError, match=rf"{good.name} is {match}"):
        read_checked(good, FMT)


def test_duplicate_header_keys_are_refused(tmp_path):
    # two __metadata__ objects: JSON readers disagree on which one counts, so neither is trusted
    header = b'{"__metadata__":{"note":"a"},"__metadata__":{"note":"b"}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="duplicate keys"):
        read_checked(path, FMT)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_checked(tmp_path / "nope.safetensors", FMT)


def test_another_format_or_version_is_refused_naming_both_versions(good, tmp_path):
    write_checked(tmp_path / "v2.safetensors", TENSORS, {"note": "x"}, FileFormat("ltc-test", 2, metadata=("note",)))
    with pytest.raises(FormatError, match=r"format version 2; this ltc .* reads version 3 only\. Remake it"):
        read_checked(tmp_path / "v2.safetensors", FMT)
    write_checked(tmp_path / "other.safetensors", TENSORS, {"note": "x"}, FileFormat("other", 3, metadata=("note",)))
    with pytest.raises(FormatError, match="is not an ltc-test file"):
        read_checked(tmp_path / "other.safetensors", FMT)


@pytest.mark.parametrize("tensors, meta, match", [
    ({"a": TENSORS["a"]}, {"note": "x"}, r"missing \['b'\], extra \[\]"),
    ({**TENSORS, "c": torch.zeros(1)}, {"note": "x"}, r"missing \[\], extra \['c'\]"),
    (TENSORS, {}, r"metadata .* missing \['note'\]"),
    (TENSORS, {"note": "x", "stray": "y"}, r"metadata .* extra \['stray'\]"),
])
def test_missing_or_extra_tensors_and_metadata_are_named(tmp_path, tensors, meta, match):
    loose = FileFormat("ltc-test", 3, metadata=("note",), extra_metadata=True)
    path = tmp_path / "f.safetensors"
    write_checked(path, tensors, meta, loose) if meta else save_file(
        tensors, str(path), metadata={"format": "ltc-test", "format_version": "3", "content_sha256": "0"})
    with pytest.raises(ValueError, match=match):
        read_checked(path, FMT)


# -- atomic writes ---------------------------------------------------------------------------------
def test_writes_leave_no_temporary_file_and_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_checked(tmp_path / "f.safetensors", TENSORS, {"note": "x"}, FMT)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]
    assert (tmp_path / "f.safetensors").stat().st_mode & 0o777 == 0o640


def test_temporary_names_belong_to_one_writer(tmp_path):
    a, b = io.temp_path(tmp_path / "f.safetensors", "0-run"), io.temp_path(tmp_path / "f.safetensors", "0-run")
    assert a != b and a.parent == tmp_path and a.name.startswith(f".f.safetensors.tmp-0-run-{os.getpid()}-")


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(good):
    before = good.read_bytes()

    def fail(tmp):
        assert tmp.exists() and tmp.parent == good.parent
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_checked(good, TENSORS, {"note": "new"}, FMT, before_replace=fail)
    assert good.read_bytes() == before and sorted(p.name for p in good.parent.iterdir()) == [good.name]


def test_reserved_metadata_keys_are_written_by_io_only(tmp_path):
    with pytest.raises(ValueError, match="written by ltc.io itself"):
        write_checked(tmp_path / "f.safetensors", TENSORS, {"note": "x", "content_sha256": "0"}, FMT)


# -- the shipped files: pinned ---------------------------------------------------------------------
def test_every_shipped_file_matches_its_pin():
    pins = json.loads(io.PINS_FILE.read_text())
    shipped = sorted(p.relative_to(io.SHIPPED_DIR).as_posix() for p in io.SHIPPED_DIR.rglob("*.safetensors"))
    assert sorted(pins) == shipped
    for name in shipped:
        assert io.file_sha256((io.SHIPPED_DIR / name).read_bytes()) == pins[name], name


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the package's shipped files (and pins), standing in for the installed package."""
    root = tmp_path / "zoo"
    for sub in ("weights", "data", "calibrations"):
        shutil.copytree(io.SHIPPED_DIR / sub, root / sub, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(io.PINS_FILE, root / "pinned.json")
    monkeypatch.setattr(io, "SHIPPED_DIR", root.resolve())
    monkeypatch.setattr(io, "PINS_FILE", root.resolve() / "pinned.json")
    return root


def _zeroed_and_resigned(path):
    tensors, meta = read_checked(path, WEIGHTS_FORMAT)
    meta = {k: v for k, v in meta.items() if k not in io.RESERVED}
    write_checked(path, {k: torch.zeros_like(v) for k, v in tensors.items()}, meta, WEIGHTS_FORMAT)


def test_shipped_weights_with_a_recomputed_digest_are_refused_by_their_pin(shipped_copy, tmp_path):
    path = shipped_copy / "weights" / "unet_small.safetensors"
    zoo.load("unet_small", directory=path.parent)                 # intact: loads
    _zeroed_and_resigned(path)
    with pytest.raises(ValueError, match=r"unet_small\.safetensors does not match the sha256 pinned"):
        zoo.load("unet_small", directory=path.parent)
    # the same file outside the package is a user's file: checked by its own digest only
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(path, mine / "unet_small.safetensors")
    assert float(zoo.load("unet_small", directory=mine).fn.net.conv_in.weight.abs().sum()) == 0.0


def test_a_file_added_to_the_shipped_folders_without_a_pin_is_refused(shipped_copy):
    weights = shipped_copy / "weights"
    shutil.copy(weights / "unet_small.safetensors", weights / "unet_extra.safetensors")
    with pytest.raises(ValueError, match="has no sha256 pinned"):
        zoo.load("unet_extra", directory=weights)


def test_shipped_data_and_calibrations_are_pinned_too(shipped_copy):
    cal = shipped_copy / "calibrations" / "demo_ltc.safetensors"
    Calibration.load(cal)
    tensors, meta = read_checked(cal, FileFormat("ltc-calibration", CALIBRATION_FILE.version, extra_metadata=True))
    meta = {k: v for k, v in meta.items() if k not in io.RESERVED}
    meta["accepted"] = "true"
    write_checked(cal, tensors, meta, FileFormat("ltc-calibration", CALIBRATION_FILE.version, extra_metadata=True))
    with pytest.raises(ValueError, match="pinned"):
        Calibration.load(cal)
    data = shipped_copy / "data" / "digits.safetensors"
    data.write_bytes(data.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match="pinned"):
        read_checked(data, zoo.data.DATA_FORMAT)


# -- zoo weights: one metadata byte ------------------------------------------------------------------
@pytest.mark.parametrize("old, new", [(b'num_train_timesteps\\": 1000', b'num_train_timesteps\\": 1001'),
                                      (b'spacing\\": \\"trailing', b'spacing\\": \\"linspace')])
def test_one_changed_metadata_byte_of_a_weight_file_is_refused(tmp_path, old, new):
    raw = (zoo.WEIGHTS_DIR / "unet_small.safetensors").read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    (tmp_path / "unet_small.safetensors").write_bytes(raw.replace(old, new))
    for read in (lambda: zoo.load("unet_small", directory=tmp_path), lambda: zoo.schedule("unet_small", tmp_path),
                 lambda: zoo.info("unet_small", tmp_path)):
        with pytest.raises(ValueError, match="does not match its content_sha256"):
            read()


def test_version_1_weight_files_are_refused_with_how_to_regenerate(tmp_path):
    tensors, meta = read_checked(zoo.WEIGHTS_DIR / "unet_small.safetensors", WEIGHTS_FORMAT)
    meta = {k: v for k, v in meta.items() if k not in io.RESERVED}
    save_file(tensors, str(tmp_path / "unet_small.safetensors"),
              metadata={**meta, "ltc_zoo_format": "1", "tensors_sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"format version 1; this ltc .* reads version 2 only.*Regenerate it"):
        zoo.load("unet_small", directory=tmp_path)


def test_non_finite_weights_are_refused(tmp_path):
    tensors, meta = read_checked(zoo.WEIGHTS_DIR / "unet_small.safetensors", WEIGHTS_FORMAT)
    meta = {k: v for k, v in meta.items() if k not in io.RESERVED}
    tensors["conv_out.bias"] = torch.full_like(tensors["conv_out.bias"], float("nan"))
    write_checked(tmp_path / "unet_small.safetensors", tensors, meta, WEIGHTS_FORMAT)
    with pytest.raises(ValueError, match="'conv_out.bias' holds NaN or Inf"):
        zoo.load("unet_small", directory=tmp_path)


# -- model fingerprints ------------------------------------------------------------------------------
def test_model_fingerprint_follows_the_weights_not_the_wrapping():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 4))
    fp = io.model_fingerprint(net)
    assert fp is not None and io.model_fingerprint(copy.deepcopy(net)) == fp        # same weights, new object
    assert io.model_fingerprint(lambda x, t: net(x)) == fp                           # a closure over it
    assert io.model_fingerprint(ltc.Model(net.forward, "eps", "m")) == fp            # a bound method in a Model
    assert io.model_fingerprint(lambda x, t: x) is None                              # nothing to fingerprint
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[1].bias[0] += 1e-3
    assert io.model_fingerprint(other) != fp
    assert io.model_fingerprint(copy.deepcopy(net).double()) != fp                   # another dtype: other bytes


def test_model_fingerprint_sees_in_place_changes_and_replacements_after_caching():
    net = torch.nn.Linear(3, 3)
    fp = io.model_fingerprint(net)
    with torch.no_grad():
        net.weight.mul_(2.0)                                                        # in place: version counter
    fp2 = io.model_fingerprint(net)
    assert fp2 != fp
    net.load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)})
    assert io.model_fingerprint(net) not in (fp, fp2)
    net.weight = torch.nn.Parameter(torch.ones(3, 3))                               # replaced
    twin = torch.nn.Linear(3, 3)
    twin.load_state_dict(net.state_dict())
    assert io.model_fingerprint(net) == io.model_fingerprint(twin) != fp


def test_model_fingerprint_is_cached_until_the_weights_change(monkeypatch):
    net = torch.nn.Linear(16, 16)
    io.model_fingerprint(net)
    hashed = []
    original = io._update_tensor
    monkeypatch.setattr(io, "_update_tensor", lambda h, t: (hashed.append(t), original(h, t)))
    io.model_fingerprint(net)
    assert hashed == []
    with torch.no_grad():
        net.bias.zero_()
    io.model_fingerprint(net)
    assert len(hashed) == 2


def test_zoo_models_are_fingerprinted_through_their_wrapper():
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    assert io.model_fingerprint(small.fn) == io.model_fingerprint(zoo.load("unet_small").fn)
    assert io.model_fingerprint(small.fn) != io.model_fingerprint(large.fn)


def test_the_version_1_data_file_without_a_format_is_refused_naming_the_versions(tmp_path, monkeypatch):
    tensors, meta = read_checked(zoo.data.DATA_PATH, zoo.data.DATA_FORMAT)
    old = tmp_path / "digits.safetensors"
    save_file(tensors, str(old), metadata={k: v for k, v in meta.items() if k not in io.RESERVED})
    monkeypatch.setattr(zoo.data, "DATA_PATH", old)
    with pytest.raises(FormatError, match=r"no 'format' in its metadata.*\(version 1\).*reads version 2 only\. "
                                          r"Reinstall ltc"):
        zoo.digits("train")
