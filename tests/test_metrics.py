"""Segmentation metrics: hand-computed cases, empty-mask conventions, per-slice lists, reference libraries."""

import json
import math
import re
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewsam_jax import cli, metrics


def cube(shape, corner, side):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + side) for c in corner)] = True
    return mask


def ball(shape, spacing, center_mm, radius_mm):
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, center_mm)) <= radius_mm**2


def blob(seed, shape=(40, 48, 24), sigma=(3.0, 3.0, 1.5), quantile=0.7):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field > np.quantile(field, quantile)


def blob_pair(seed):
    """A blob and a shifted, perturbed copy: partial overlap, irregular surfaces."""
    pred = blob(seed)
    gt = np.roll(pred, (1, -2, 1), (0, 1, 2)) ^ blob(100 + seed, sigma=(2.0, 2.0, 1.0), quantile=0.93)
    return pred, gt


BLOB_SPACING = (0.8, 0.8, 2.5)


@pytest.mark.parametrize("offset", [(0, 0, 0), (2, 0, 0), (1, 2, 3), (0, 5, 0), (6, 0, 0)])
def test_offset_cubes_dice_iou(offset):
    side = 6
    a = cube((16, 16, 16), (3, 3, 3), side)
    b = cube((16, 16, 16), tuple(3 + o for o in offset), side)
    inter = np.prod([max(side - abs(o), 0) for o in offset])
    assert metrics.dice(a, b) == pytest.approx(2 * inter / (2 * side**3), abs=1e-15)
    assert metrics.iou(a, b) == pytest.approx(inter / (2 * side**3 - inter), abs=1e-15)
    assert metrics.dice(a, b) == metrics.dice(b, a)


@pytest.mark.parametrize("ndim", [1, 2, 4])
def test_dice_iou_any_dimension(ndim):
    a = cube((8,) * ndim, (1,) * ndim, 4)
    b = cube((8,) * ndim, (2,) + (1,) * (ndim - 1), 4)
    inter = 3 * 4 ** (ndim - 1)
    assert metrics.dice(a, b) == pytest.approx(inter / 4**ndim)
    assert metrics.iou(a, b) == pytest.approx(inter / (2 * 4**ndim - inter))


@pytest.mark.parametrize(
    "shape,spacing,p,q",
    [
        ((10, 12, 8), (0.7, 1.3, 2.5), (1, 2, 3), (4, 6, 5)),
        ((10, 12, 8), (2.0, 2.0, 2.0), (0, 0, 0), (9, 11, 7)),
        ((9, 9), (0.5, 3.0), (2, 2), (7, 4)),
    ],
)
def test_single_voxels_exact_distance(shape, spacing, p, q):
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[p], b[q] = True, True
    expected = math.dist(np.multiply(p, spacing), np.multiply(q, spacing))
    d_ab, d_ba = metrics.surface_distances(a, b, spacing)
    np.testing.assert_allclose(d_ab, [expected])
    np.testing.assert_allclose(d_ba, [expected])
    assert metrics.hd95(a, b, spacing) == pytest.approx(expected)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=expected) == 1.0  # tolerance is inclusive
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=0.99 * expected) == 0.0


@pytest.mark.parametrize("shift_mm", [(0.0, 0.0, 6.0), (6.0, 0.0, 0.0), (0.0, 0.0, 3.0)])
def test_shifted_sphere_anisotropic(shift_mm):
    """A 12 mm ball vs the same ball shifted: Hausdorff = shift; HD95 just below it (95% of a sphere)."""
    shape, spacing = (40, 40, 16), (1.0, 1.0, 3.0)
    center = np.array([20.0, 20.0, 24.0])
    a = ball(shape, spacing, center, 12.0)
    b = ball(shape, spacing, center + shift_mm, 12.0)
    shift = max(shift_mm)
    d_ab, d_ba = metrics.surface_distances(a, b, spacing)
    assert max(d_ab.max(), d_ba.max()) == pytest.approx(shift)
    assert 0.8 * shift <= metrics.hd95(a, b, spacing) <= shift + 1e-9
    if shift_mm[2]:  # spacing is respected: the same masks measured in voxel units
        assert metrics.hd95(a, b, 1.0) == pytest.approx(shift / 3)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=shift) > 0.95
    assert metrics.surface_dice(a, a, spacing, tolerance_mm=0.0) == 1.0 and metrics.hd95(a, a, spacing) == 0.0


@pytest.mark.parametrize("pred_empty,gt_empty", [(True, False), (False, True), (True, True)])
def test_empty_conventions(pred_empty, gt_empty):
    full = cube((8, 8, 8), (2, 2, 2), 3)
    empty = np.zeros_like(full)
    pred, gt = (empty if pred_empty else full), (empty if gt_empty else full)
    both = pred_empty and gt_empty
    assert metrics.dice(pred, gt) == (1.0 if both else 0.0)
    assert metrics.iou(pred, gt) == (1.0 if both else 0.0)
    assert metrics.hd95(pred, gt, (1.0, 2.0, 3.0)) == (0.0 if both else math.inf)
    assert metrics.surface_dice(pred, gt, (1.0, 2.0, 3.0)) == (1.0 if both else 0.0)
    d_pg, d_gp = metrics.surface_distances(pred, gt, (1.0, 2.0, 3.0))
    assert d_pg.size == (0 if pred_empty else 26) and d_gp.size == (0 if gt_empty else 26)
    assert np.all(np.isinf(d_pg)) and np.all(np.isinf(d_gp))


def test_boundary_connectivity():
    """A 21-pixel plus sign: its inner corners such as (2, 2) touch the background only diagonally, so
    they are boundary under full connectivity (5 interior pixels) but not face connectivity (9)."""
    plus = np.zeros((7, 7), bool)
    plus[1:6, 2:5] = plus[2:5, 1:6] = True
    assert metrics.surface_distances(plus, plus, 1.0)[0].size == 21 - 5
    assert metrics.surface_distances(plus, plus, 1.0, connectivity=1)[0].size == 21 - 9


def test_input_validation():
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        metrics.dice(a, np.zeros((4, 5, 7), bool))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        metrics.surface_dice(a, a, (1.0, 0.0, 1.0))


def label_maps():
    """(z, y, x) = (6, 8, 5) label maps: class 1 cubes, class 2 predicted but absent, label 7 ignored."""
    gt, pred = np.zeros((6, 8, 5), np.int16), np.zeros((6, 8, 5), np.int16)
    gt[1:4, 1:4, 1:3] = 1  # slices x=1, 2
    pred[1:4, 1:4, 2:4] = 1  # slices x=2, 3
    pred[5, 6:8, 0] = 2
    gt[0, 0, :] = pred[0, 7, :] = 7
    return pred, gt


def test_evaluate_per_slice_and_mean():
    pred, gt = label_maps()
    spacing = (2.0, 0.5, 0.5)
    result = metrics.evaluate(pred, gt, spacing, {1: "liver", 2: "spleen"}, per_slice_axis=2)
    assert set(result) == {"liver", "spleen", "mean"}
    liver, spleen = result["liver"], result["spleen"]
    assert (liver["pred_voxels"], liver["gt_voxels"]) == (18, 18)
    assert liver["dice"] == pytest.approx(0.5) and liver["iou"] == pytest.approx(1 / 3)
    assert liver["hd95"] == metrics.hd95(pred == 1, gt == 1, spacing)
    assert liver["surface_dice"] == metrics.surface_dice(pred == 1, gt == 1, spacing, 1.0)
    slices = liver["per_slice"]
    assert [s["slice"] for s in slices] == list(range(5))
    assert [s["dice"] for s in slices] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [s["iou"] for s in slices] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [s["empty"] for s in slices] == [True, False, False, False, True]
    assert (spleen["dice"], spleen["hd95"], spleen["surface_dice"]) == (0.0, math.inf, 0.0)
    assert (spleen["pred_voxels"], spleen["gt_voxels"]) == (2, 0)
    assert [s["empty"] for s in spleen["per_slice"]] == [False, True, True, True, True]
    mean = result["mean"]
    assert mean["dice"] == pytest.approx(0.25) and mean["iou"] == pytest.approx(1 / 6)
    # a missed/hallucinated class makes the mean HD95 infinite, named, never silently dropped (issue #11)
    assert mean["hd95"] == math.inf and mean["hd95_infinite_classes"] == ["spleen"]
    assert mean["hd95_finite"] == liver["hd95"] and mean["hd95_finite_classes"] == 1
    assert (liver["gt_empty"], liver["pred_empty"], spleen["gt_empty"], spleen["pred_empty"]) == (False, False, True, False)
    assert mean["surface_dice"] == pytest.approx(liver["surface_dice"] / 2)


def test_evaluate_axes_and_errors():
    pred, gt = label_maps()
    result = metrics.evaluate(pred, gt, (1.0, 1.0, 1.0), {1: "liver"}, per_slice_axis=0)
    assert len(result["liver"]["per_slice"]) == 6
    assert "per_slice" not in metrics.evaluate(pred, gt, (1.0,) * 3, {1: "liver"}, per_slice_axis=None)["liver"]
    with pytest.raises(ValueError, match=r"\(6, 8, 5\).*\(6, 8, 4\)"):
        metrics.evaluate(pred, gt[..., :4], (1.0,) * 3, {1: "liver"})
    with pytest.raises(ValueError, match="mean"):
        metrics.evaluate(pred, gt, (1.0,) * 3, {1: "mean"})


def test_to_json_strict():
    pred, gt = label_maps()
    result = metrics.evaluate(pred, gt, (2.0, 0.5, 0.5), {1: "liver", 2: "spleen", 3: "kidney"})
    text = metrics.to_json(result)
    loaded = json.loads(text)  # strict: would fail on Infinity/NaN tokens
    assert "Infinity" not in text and "NaN" not in text
    assert loaded["spleen"]["hd95"] is None and loaded["kidney"]["hd95"] == 0.0
    assert loaded["liver"]["per_slice"][0] == {"slice": 0, "dice": 1.0, "iou": 1.0, "empty": True}
    assert loaded["mean"]["hd95_finite_classes"] == 2
    assert json.loads(metrics.to_json({"x": {"hd95": np.float32("nan"), "n": np.int64(3)}})) == {
        "x": {"hd95": None, "n": 3}
    }


@pytest.mark.parametrize("seed", [0, 2])
def test_agrees_with_monai(seed):
    """With face-connectivity boundaries the definitions coincide: agreement to float32 precision."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, gt = blob_pair(seed)
    tp, tg = (torch.from_numpy(m)[None, None] for m in (pred, gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # monai's own deprecated argument
        ref_hd = monai_metrics.compute_hausdorff_distance(
            tp, tg, include_background=True, percentile=95, spacing=BLOB_SPACING
        ).item()
        ref_nsd = monai_metrics.compute_surface_dice(
            tp, tg, [1.5], include_background=True, spacing=BLOB_SPACING
        ).item()
    ref_dice = monai_metrics.compute_dice(tp, tg, include_background=True).item()
    hd = metrics.hd95(pred, gt, BLOB_SPACING, connectivity=1)
    nsd = metrics.surface_dice(pred, gt, BLOB_SPACING, 1.5, connectivity=1)
    print(f"seed {seed}: hd95 {hd:.4f} vs monai {ref_hd:.4f}; nsd {nsd:.5f} vs {ref_nsd:.5f}")
    assert hd == pytest.approx(ref_hd, rel=1e-6)
    assert nsd == pytest.approx(ref_nsd, rel=1e-6)
    assert metrics.dice(pred, gt) == pytest.approx(ref_dice, rel=1e-6)


@pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")  # its scipy.ndimage.* namespaces
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_close_to_deepmind_surface_distance(seed):
    """DeepMind's surfel-based NSD/HD95 (the original definition): the default full-connectivity voxel
    approximation lies within a fraction of a voxel, and closer than face-connectivity boundaries."""
    sd = pytest.importorskip("surface_distance")
    pred, gt = blob_pair(seed)
    dists = sd.compute_surface_distances(gt, pred, BLOB_SPACING)
    ref_hd = sd.compute_robust_hausdorff(dists, 95)
    assert metrics.hd95(pred, gt, BLOB_SPACING) == pytest.approx(ref_hd, abs=0.5 * max(BLOB_SPACING))
    for tol in (1.5, 3.0):
        ref = sd.compute_surface_dice_at_tolerance(dists, tol)
        full = metrics.surface_dice(pred, gt, BLOB_SPACING, tol)
        face = metrics.surface_dice(pred, gt, BLOB_SPACING, tol, connectivity=1)
        print(f"seed {seed} tol {tol}: nsd full {full:.4f} face {face:.4f} deepmind {ref:.4f}")
        assert full == pytest.approx(ref, abs=0.03)
        assert abs(full - ref) < abs(face - ref)
    assert metrics.dice(pred, gt) == pytest.approx(sd.compute_dice_coefficient(gt, pred))


# ------------------------------------------------- empty maps, non-integer labels (issue #11)
def test_evaluate_empty_conventions_are_flagged():
    gt = np.zeros((6, 6, 4), np.uint8)
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1] = 2
    result = metrics.evaluate(pred, gt, (1.0,) * 3, {1: "a", 2: "b"}, per_slice_axis=None)
    a, b = result["a"], result["b"]
    assert (a["dice"], a["hd95"], a["gt_empty"], a["pred_empty"]) == (1.0, 0.0, True, True)  # both empty
    assert (b["dice"], b["hd95"], b["gt_empty"], b["pred_empty"]) == (0.0, math.inf, True, False)  # one empty
    assert result["mean"]["hd95"] == math.inf and result["mean"]["hd95_infinite_classes"] == ["b"]
    loaded = json.loads(metrics.to_json(result))
    assert loaded["b"]["hd95"] is None and loaded["b"]["gt_empty"] is True
    assert loaded["mean"]["hd95_infinite_classes"] == ["b"] and loaded["mean"]["hd95_finite"] == 0.0


def test_label_maps_must_hold_integers():
    labels = np.zeros((4, 4, 2), np.float32)
    labels[1, 1, 1] = 2.0
    assert metrics.label_map(labels).dtype == np.int64  # integral floats are fine (float32 label files)
    assert metrics.evaluate(labels, labels, (1.0,) * 3, {2: "x"})["x"]["dice"] == 1.0
    soft = labels * 0.37
    with pytest.raises(ValueError, match=r"pred_labels: a label map must hold integer ids, but 1 of 32 voxels are not "
                                         r"integers \(e\.g\. 0\.74.*float32\); is it an intensity image or a probability map"):
        metrics.evaluate(soft, labels, (1.0,) * 3, {2: "x"})
    labels[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"gt_labels: .* voxels are not integers \(e\.g\. nan"):
        metrics.evaluate(np.zeros((4, 4, 2), np.int32), labels, (1.0,) * 3, {2: "x"})


def test_every_label_reader_refuses_fractional_values(tmp_path):
    """label_maps' readers (files, Volumes, arrays on a grid) take whole-number floats and refuse a probability map
    naming it, as metrics does; nothing is rounded."""
    from fewsam_jax.io import load_volume
    from fewsam_jax.label_maps import label_ids, labels_on_grid, read_labels

    whole = np.zeros((4, 4, 2), np.float32)
    whole[1, 1, 1] = 2.0
    path = _nifti(tmp_path / "whole.nii.gz", whole)
    assert read_labels(path).dtype == np.int32 and read_labels(path)[1, 1, 1] == 2
    soft = _nifti(tmp_path / "soft.nii.gz", whole * 0.37)
    with pytest.raises(ValueError, match=r"soft\.nii\.gz: a label map must hold integer ids"):
        read_labels(soft)
    image = load_volume(path)
    with pytest.raises(ValueError, match=r"prediction \(.*soft\.nii\.gz\): a label map must hold integer ids"):
        labels_on_grid(soft, image, "prediction")
    with pytest.raises(ValueError, match=r"labels: a label map must hold integer ids, but 1 of 32"):
        labels_on_grid(whole + 0.5 * (whole > 0), image)
    assert np.array_equal(label_ids(np.array([[True, False]]), "x"), [[1, 0]])
    # scaled integers (NIfTI scl_slope) read back a little off whole numbers: rounded, never truncated
    assert np.array_equal(label_ids(np.array([0.0, 0.99608, 1.0000153, 2.004]), "x"), [0, 1, 1, 2])
    with pytest.raises(ValueError, match="1 of 1 voxels are not integers"):
        label_ids(np.array([0.98]), "x")


def _nifti(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def maps(tmp_path):
    gt = np.zeros((8, 8, 4), np.uint8)
    gt[2:5, 2:5, 1:3] = 1
    gt[6, 6, 0] = 2
    pred = gt.copy()
    pred[6, 6, 0] = 0  # class 2 missed
    return tmp_path, gt, pred


def test_cli_evaluate_reports_missed_class_and_inf_mean(maps, capsys):
    tmp_path, gt, pred = maps
    args = ["evaluate", _nifti(tmp_path / "p.nii.gz", pred), _nifti(tmp_path / "g.nii.gz", gt)]
    assert cli.main(args) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["1"].split()[1:5] == ["1.000", "1.000", "0.00", "1.000"]
    assert rows["2"].split()[1:5] == ["0.000", "0.000", "inf", "0.000"] and "missed: not in the prediction" in rows["2"]
    assert rows["mean"].split()[3] == "inf" and "hd95 inf: 1 class(es) empty in one map (2); over the 1 others 0.00 mm" in rows["mean"]
    assert cli.main([*args, "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["2"]["hd95"] is None and loaded["2"]["pred_empty"] is True
    assert loaded["mean"]["hd95"] is None and loaded["mean"]["hd95_infinite_classes"] == ["2"]


def test_cli_evaluate_empty_ground_truth(maps, capsys):
    """Empty GT used to print only a NaN mean row."""
    tmp_path, gt, pred = maps
    empty = _nifti(tmp_path / "empty.nii.gz", np.zeros_like(gt))
    assert cli.main(["evaluate", _nifti(tmp_path / "p.nii.gz", pred), empty]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["1"].split()[1:4] == ["0.000", "0.000", "inf"] and "not in the ground truth: predicted only" in rows["1"]
    # both empty: nothing to score unless classes are named; then the convention is printed with its flag
    assert cli.main(["evaluate", empty, empty]) == 2
    assert "both empty (no label other than 0): nothing to score" in capsys.readouterr().err
    assert cli.main(["evaluate", empty, empty, "--classes", "1=liver"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[:5] == ["liver", "1.000", "1.000", "0.00", "1.000"] and "absent from both: Dice 1, HD95 0 by convention" in row


def test_cli_evaluate_refuses_non_label_predictions(maps, capsys):
    tmp_path, gt, _ = maps
    g = _nifti(tmp_path / "g.nii.gz", gt)
    rng = np.random.default_rng(0)
    soft = _nifti(tmp_path / "prob.nii.gz", (gt * 0.8).astype(np.float32))  # a probability map
    assert cli.main(["evaluate", soft, g]) == 2
    assert "prob.nii.gz: a label map must hold integer ids, but 19 of 256 voxels are not integers" in capsys.readouterr().err
    ct = _nifti(tmp_path / "ct.nii.gz", rng.integers(-1000, 400, gt.shape).astype(np.int16))  # HU
    assert cli.main(["evaluate", ct, g]) == 2
    assert "ct.nii.gz: a label map holds ids >= 0" in capsys.readouterr().err
    mr = _nifti(tmp_path / "mr.nii.gz", rng.integers(0, 255, gt.shape).astype(np.uint8))  # intensities
    assert cli.main(["evaluate", mr, g]) == 2
    err = capsys.readouterr().err
    assert re.search(r"mr\.nii\.gz holds \d+ label ids that .*g\.nii\.gz lacks \(\d+, \d+, .*, \.\.\.\): an intensity image rather than", err)


def test_per_slice_overlap_is_dice_and_iou_of_each_slice():
    pred = np.zeros((4, 3, 3), bool)
    gt = np.zeros((4, 3, 3), bool)
    pred[0, :2] = gt[0, :1] = True  # 6 vs 3 pixels, 3 shared
    gt[1, 0, 0] = True  # missed
    pred[2] = gt[2] = True  # equal
    dice, iou, empty = metrics.per_slice_overlap(pred, gt, axis=0)
    np.testing.assert_allclose(dice, [2 * 3 / 9, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(iou, [3 / 6, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(empty, [False, False, False, True])
    for k in range(4):
        assert dice[k] == metrics.dice(pred[k], gt[k]) and iou[k] == metrics.iou(pred[k], gt[k])
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.per_slice_overlap(pred, gt[:3], axis=0)
