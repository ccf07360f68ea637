"""Boundary metrics (HD, HD95, ASSD, MASD, NSD, Boundary IoU) and label regions: checked
against float64 brute force written here, against MONAI (voxel convention), DeepMind's
surface-distance (surfel convention) and medpy (pooled percentile)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_jdt.scoring import ScoringOptions, score_arrays
from monai_jdt.scoring.boundary import (
    BoundaryOptions,
    boundary_scores,
    lattice_offsets,
    parse_tolerances,
    surfel_table,
    volume_diagonal_mm,
)
from monai_jdt.scoring.confusion import confusion_matrix
from monai_jdt.scoring.errors import (
    InvalidOptionError,
    NonIntegerLabelsError,
    ShapeMismatchError,
)
from monai_jdt.scoring.regions import parse_regions

ALL = ("hd", "hd95", "assd", "masd", "nsd", "boundary_iou")
DISTANCES = ("hd", "hd95", "assd", "masd", "nsd")
#: the score of a perfect match: 0 mm, NSD and Boundary IoU 1
PERFECT = {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "masd": 0.0, "nsd": 1.0, "boundary_iou": 1.0}


def blobs(shape: tuple[int, ...], labels: int, seed: int, density: float = 0.02) -> np.ndarray:
    """A label map of random lumpy blobs (labels 1..labels, later ones over earlier ones)."""
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape, np.uint8)
    for label in range(1, labels + 1):
        seeds = rng.random(shape) < density
        mask = ndimage.binary_dilation(seeds, iterations=2) & (rng.random(shape) < 0.9)
        volume[mask] = label
    return volume


# --- independent references -----------------------------------------------------------------


def voxel_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Border voxel centres (mm): the mask minus its scipy erosion (cross, outside = 0)."""
    border = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(border).astype(np.float64) * np.asarray(spacing)


def surfel_points(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (mm) and areas of the marching-cubes cells with a mixed neighbourhood."""
    table, kernel = surfel_table(spacing)
    padded = np.pad(mask.astype(np.int64), 1)
    cells, areas = [], []
    for cell in np.ndindex(*(n - 1 for n in padded.shape)):
        window = padded[tuple(slice(c, c + 2) for c in cell)]
        code = int((window * kernel).sum())
        if 0 < code < int(kernel.sum()):
            cells.append(cell)
            areas.append(table[code])
    return np.asarray(cells, np.float64) * np.asarray(spacing), np.asarray(areas)


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)


def weighted_percentile(d: np.ndarray, w: np.ndarray, p: float) -> float:
    order = np.argsort(d)
    cum = np.cumsum(w[order]) / w.sum()
    return float(d[order][min(int(np.searchsorted(cum, p / 100)), d.size - 1)])


def brute_force(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    surface: str,
    mode: str,
    tolerance: float,
    p: float = 95.0,
) -> dict[str, float]:
    if surface == "voxel":
        a, b = voxel_points(pred, spacing), voxel_points(ref, spacing)
        wa, wb = np.ones(len(a)), np.ones(len(b))
    else:
        (a, wa), (b, wb) = surfel_points(pred, spacing), surfel_points(ref, spacing)
    da, db = nearest(a, b), nearest(b, a)
    if surface == "voxel":
        pct = (
            max(np.percentile(da, p), np.percentile(db, p))
            if mode == "directed"
            else np.percentile(np.concatenate([da, db]), p)
        )
    else:
        pct = (
            max(weighted_percentile(da, wa, p), weighted_percentile(db, wb, p))
            if mode == "directed"
            else weighted_percentile(np.concatenate([da, db]), np.concatenate([wa, wb]), p)
        )
    total = wa.sum() + wb.sum()
    return {
        "hd": max(da.max(), db.max()),
        "hd95": float(pct),
        "assd": float((wa @ da + wb @ db) / total),
        "masd": float((wa @ da / wa.sum() + wb @ db / wb.sum()) / 2),
        "nsd": float((wa[da <= tolerance].sum() + wb[db <= tolerance].sum()) / total),
    }


def brute_boundary_iou(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], width: float
) -> float:
    def band(mask: np.ndarray) -> set[tuple[int, ...]]:
        padded = np.pad(mask, 1)  # outside the volume is background
        inside = np.argwhere(padded).astype(np.float64)
        outside = np.argwhere(~padded).astype(np.float64)
        scale = np.asarray(spacing)
        d = np.sqrt((((inside[:, None] - outside[None]) * scale) ** 2).sum(-1)).min(1)
        border = {tuple(x) for x in np.argwhere(mask & ~ndimage.binary_erosion(mask)) + 1}
        near = {tuple(int(v) for v in x) for x in inside[d <= width]}
        return near | border

    bp, br = band(pred), band(ref)
    return len(bp & br) / len(bp | br)


CASES = [
    ((14, 16, 12), (1.0, 1.0, 1.0)),
    ((14, 16, 12), (0.8, 1.1, 1.7)),
    ((30, 26), (0.7, 1.3)),
]


@pytest.mark.parametrize(("shape", "spacing"), CASES)
@pytest.mark.parametrize("surface", ["voxel", "surfel"])
@pytest.mark.parametrize("mode", ["directed", "pooled"])
def test_every_distance_metric_equals_brute_force(
    shape: tuple[int, ...], spacing: tuple[float, ...], surface: str, mode: str
) -> None:
    pred, ref = blobs(shape, 3, seed=1), blobs(shape, 3, seed=2)
    options = BoundaryOptions(
        metrics=DISTANCES,
        percentile=90.0,
        percentile_mode=mode,
        nsd_tolerance=1.5,
        surface=surface,
    )
    scores = boundary_scores(pred, ref, [1, 2, 3], options, spacing=spacing)
    for score, label in zip(scores, (1, 2, 3), strict=True):
        expected = brute_force(pred == label, ref == label, spacing, surface, mode, 1.5, p=90.0)
        assert score.key == label and score.missing is None
        assert score.values == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_far_apart_surfaces_are_exact_beyond_the_lattice_search() -> None:
    """Points beyond the lattice offsets' radius are answered by the KD-tree, still exactly."""
    spacing = (0.9, 1.2, 2.0)
    pred, ref = np.zeros((40, 30, 20), np.uint8), np.zeros((40, 30, 20), np.uint8)
    pred[2:6, 3:7, 2:5] = 1
    ref[30:37, 20:26, 12:18] = 1
    ref[4:6, 3:5, 2:4] = 1  # one part close, most far
    radius = lattice_offsets(spacing)[1][-1]
    options = BoundaryOptions(metrics=DISTANCES, nsd_tolerance=2.0)
    score = boundary_scores(pred, ref, [1], options, spacing=spacing)[0]
    expected = brute_force(pred == 1, ref == 1, spacing, "voxel", "directed", 2.0)
    assert expected["hd"] > 5 * radius
    assert score.values == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.1, 1.7)])
def test_boundary_iou_equals_brute_force(spacing: tuple[float, ...]) -> None:
    pred, ref = blobs((12, 13, 11), 2, seed=3), blobs((12, 13, 11), 2, seed=4)
    for width in (0.5, 1.9, 3.0):
        options = BoundaryOptions(metrics=("boundary_iou",), boundary_width=width)
        scores = boundary_scores(pred, ref, [1, 2], options, spacing=spacing)
        for score, label in zip(scores, (1, 2), strict=True):
            expected = brute_boundary_iou(pred == label, ref == label, spacing, width)
            assert score.values["boundary_iou"] == pytest.approx(expected, rel=1e-12)


def test_default_boundary_width_is_two_percent_of_the_diagonal() -> None:
    options = BoundaryOptions(metrics=("boundary_iou",))
    assert options.width((100, 50, 20), (1.0, 2.0, 2.5)) == pytest.approx(
        0.02 * math.sqrt(100**2 + 100**2 + 50**2)
    )
    assert volume_diagonal_mm((3, 4), None) == 5.0


def monai_one_hot(volume: np.ndarray, labels: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.stack([volume == k for k in labels])[None]).float()


@pytest.mark.parametrize("seed", [5, 6, 7])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.1, 1.7)])
def test_voxel_convention_equals_monai(seed: int, spacing: tuple[float, ...]) -> None:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    shape = (22, 25, 19)
    pred, ref = blobs(shape, 3, seed), blobs(shape, 3, seed + 100)
    labels = [1, 2, 3]
    p, r = monai_one_hot(pred, labels), monai_one_hot(ref, labels)
    options = BoundaryOptions(metrics=("hd", "hd95", "assd", "nsd"), nsd_tolerance=2.2)
    scores = boundary_scores(pred, ref, labels, options, spacing=spacing)
    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, r, **kw)[0]
        hd95 = compute_hausdorff_distance(p, r, percentile=95, **kw)[0]
        asd = compute_average_surface_distance(p, r, symmetric=True, **kw)[0]
        nsd = compute_surface_dice(p, r, [2.2] * 3, **kw)[0]
    for i, score in enumerate(scores):
        expected = {"hd": hd[i], "hd95": hd95[i], "assd": asd[i], "nsd": nsd[i]}
        # MONAI's distances and its torch.quantile interpolation are float32
        assert score.values == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-5)


@pytest.mark.parametrize("seed", [8, 9])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.1, 1.7)])
def test_surfel_convention_equals_surface_distance(seed: int, spacing: tuple[float, ...]) -> None:
    sd = pytest.importorskip("surface_distance")
    shape = (20, 24, 18)
    pred, ref = blobs(shape, 2, seed), blobs(shape, 2, seed + 100)
    options = BoundaryOptions(metrics=DISTANCES, surface="surfel", nsd_tolerance=1.5)
    scores = boundary_scores(pred, ref, [1, 2], options, spacing=spacing)
    for score, label in zip(scores, (1, 2), strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = sd.compute_surface_distances(ref == label, pred == label, spacing)
        w_ref, w_pred = d["surfel_areas_gt"], d["surfel_areas_pred"]
        pooled = (w_ref @ d["distances_gt_to_pred"] + w_pred @ d["distances_pred_to_gt"]) / (
            w_ref.sum() + w_pred.sum()
        )
        expected = {
            "hd": sd.compute_robust_hausdorff(d, 100),
            "hd95": sd.compute_robust_hausdorff(d, 95),
            "assd": pooled,
            "masd": float(np.mean(sd.compute_average_surface_distance(d))),
            "nsd": sd.compute_surface_dice_at_tolerance(d, 1.5),
        }
        assert score.values == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.1, 1.7)])
def test_pooled_percentile_equals_medpy(spacing: tuple[float, ...]) -> None:
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    pred, ref = blobs((20, 24, 18), 2, 10), blobs((20, 24, 18), 2, 11)
    options = BoundaryOptions(metrics=("hd", "hd95", "assd"), percentile_mode="pooled")
    scores = boundary_scores(pred, ref, [1, 2], options, spacing=spacing)
    for score, label in zip(scores, (1, 2), strict=True):
        p, r = pred == label, ref == label
        expected = {
            "hd": medpy_binary.hd(p, r, spacing),
            "hd95": medpy_binary.hd95(p, r, spacing),
            "assd": medpy_binary.assd(p, r, spacing),
        }
        assert score.values == pytest.approx(expected, rel=1e-12)


# --- empty masks ----------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["voxel", "surfel"])
def test_empty_masks(surface: str) -> None:
    pred, ref = np.zeros((8, 9, 7), np.uint8), np.zeros((8, 9, 7), np.uint8)
    pred[2:5, 2:5, 2:5] = 1  # label 1 only predicted
    ref[1:4, 4:8, 3:6] = 2  # label 2 only in the reference
    options = BoundaryOptions(metrics=ALL, surface=surface)
    spurious, missed, absent = boundary_scores(pred, ref, [1, 2, 3], options)
    assert spurious.missing == "reference empty" and missed.missing == "prediction empty"
    for score, reason in ((spurious, "reference empty"), (missed, "prediction empty")):
        assert {m: score.values[m] for m in ("hd", "hd95", "assd", "masd")} == dict.fromkeys(
            ("hd", "hd95", "assd", "masd")
        )
        assert score.reasons == dict.fromkeys(("hd", "hd95", "assd", "masd"), reason)
        assert score.values["nsd"] == 0.0 and score.values["boundary_iou"] == 0.0
    assert absent.missing == "both empty"
    assert absent.values == dict.fromkeys(ALL)
    assert set(absent.reasons) == set(ALL)
    one = boundary_scores(pred, ref, [3], BoundaryOptions(metrics=ALL, empty="one"))[0]
    assert one.values == PERFECT
    assert one.reasons == {}


def test_identical_masks_score_perfectly_and_touching_the_volume_edge_counts_as_border() -> None:
    volume = np.zeros((6, 7, 5), np.uint8)
    volume[:, 2:5, :] = 1  # reaches four faces of the volume
    score = boundary_scores(volume, volume, [1], BoundaryOptions(metrics=ALL))[0]
    assert score.values == PERFECT
    border = volume.astype(bool) & ~ndimage.binary_erosion(volume.astype(bool))
    assert score.surface_points == (int(border.sum()),) * 2


# --- options ----------------------------------------------------------------------------------


def test_per_label_tolerances() -> None:
    assert parse_tolerances("2") == 2.0
    assert parse_tolerances("1=2, 2=3.5,WT=1") == {1: 2.0, 2: 3.5, "WT": 1.0}
    pred, ref = blobs((14, 16, 12), 2, 12), blobs((14, 16, 12), 2, 13)
    spacing = (0.8, 1.1, 1.7)
    options = BoundaryOptions(metrics=("nsd",), nsd_tolerance={1: 2.0, 2: 0.5})
    one, two = boundary_scores(pred, ref, [1, 2], options, spacing=spacing)
    assert (one.nsd_tolerance, two.nsd_tolerance) == (2.0, 0.5)
    for score, tol, label in ((one, 2.0, 1), (two, 0.5, 2)):
        expected = brute_force(pred == label, ref == label, spacing, "voxel", "directed", tol)
        assert score.values["nsd"] == pytest.approx(expected["nsd"], rel=1e-12)
    # a structure the mapping does not name gets the default 1 mm
    assert BoundaryOptions(nsd_tolerance={1: 2.0}).tolerance(7) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ("hd", "dice")}, "boundary metrics"),
        ({"metrics": ()}, "boundary metrics"),
        ({"percentile": 101}, "percentile"),
        ({"percentile": True}, "percentile"),
        ({"percentile_mode": "mean"}, "directed or pooled"),
        ({"nsd_tolerance": -1.0}, "nsd_tolerance"),
        ({"nsd_tolerance": {1: math.inf}}, "nsd_tolerance"),
        ({"boundary_width": -2.0}, "boundary_width"),
        ({"surface": "mesh"}, "voxel or surfel"),
        ({"empty": "zero"}, "empty"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        BoundaryOptions(**kwargs)  # type: ignore[arg-type]


def test_tolerance_keys_are_read_as_the_text_reads_them() -> None:
    """``{"1": 2}`` is label 1 at 2 mm, as ``"1=2"`` is (it was kept as a name that matched
    no structure, and label 1 scored at 1 mm while the report echoed ``{"1": 2}``); a name
    must be a region of the options (``wt`` is not ``WT``); keys that are neither a label
    id nor a region name are refused, as in the text. Known answer: a cube against itself
    shifted by 2 voxels of 1 mm is within 2 mm everywhere (NSD 1), not within 1 mm."""
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    pred = np.roll(ref, 2, axis=0)
    expected = brute_force(pred == 1, ref == 1, (1.0, 1.0, 1.0), "voxel", "directed", 2.0)
    assert expected["nsd"] == 1.0
    for tolerance in ({"1": 2.0}, "1=2", {1: 2}):
        options = ScoringOptions(metrics=("nsd",), nsd_tolerance=tolerance)
        assert options.nsd_tolerance == {1: 2.0}
        assert score_arrays(pred, ref, options).label(1).metrics["nsd"] == 1.0
    regions = ScoringOptions(metrics=("nsd",), regions="WT=1", nsd_tolerance={"WT": 2})
    (row,) = [r for r in score_arrays(pred, ref, regions).labels if r.region == "WT"]
    assert row.metrics["nsd"] == 1.0
    for region_spec in ("WT=1", None):
        with pytest.raises(InvalidOptionError, match="'wt', which is not a region"):
            ScoringOptions(regions=region_spec, nsd_tolerance="wt=2")
    for bad in ({-1: 2.0}, {2**63: 2.0}, {"bad name!": 2.0}, {1: 2.0, "1": 3.0}):
        with pytest.raises(InvalidOptionError, match="nsd_tolerance"):
            ScoringOptions(nsd_tolerance=bad)


@pytest.mark.parametrize("spacing", ["113", "0.7", 0.7, (True, 1, 1), (1.0, 1.0), [[1, 1, 1]]])
def test_a_spacing_that_is_not_one_number_per_axis_is_refused(spacing: object) -> None:
    """``"113"`` was read as 1 x 1 x 3 mm, character by character; a plain number or
    ``"0.7"`` raised a bare TypeError / ValueError that did not name the argument."""
    volume = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InvalidOptionError, match="spacing must be 3 positive numbers"):
        score_arrays(volume, volume, spacing=spacing)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["", "1=", "=2", "1=x", "1=-2", "1=2,1=3", "nan"])
def test_bad_tolerances_are_refused(spec: str) -> None:
    with pytest.raises(InvalidOptionError, match="nsd_tolerance"):
        parse_tolerances(spec)


def test_bad_volumes_are_refused() -> None:
    options = BoundaryOptions()
    with pytest.raises(ShapeMismatchError, match="shapes differ"):
        boundary_scores(np.zeros((3, 4), np.uint8), np.zeros((4, 3), np.uint8), [1], options)
    with pytest.raises(NonIntegerLabelsError, match="prediction"):
        boundary_scores(np.zeros((3, 4)), np.zeros((3, 4), np.uint8), [1], options)
    with pytest.raises(InvalidOptionError, match="spacing"):
        boundary_scores(
            np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), [1], options, spacing=(1.0, 0.0)
        )
    with pytest.raises(InvalidOptionError, match="2-D or 3-D"):
        boundary_scores(
            np.zeros((3, 4, 2, 2), np.uint8),
            np.zeros((3, 4, 2, 2), np.uint8),
            [1],
            BoundaryOptions(surface="surfel"),
        )


# --- regions ----------------------------------------------------------------------------------


def test_parse_regions() -> None:
    assert parse_regions("WT=1,2,3; TC=3,2 ;ET=3;") == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


@pytest.mark.parametrize(
    "spec", ["", "WT", "WT=", "WT=1,a", "1=2", "WT=1;WT=2", "WT=1,1", "W T=1", "WT=-1"]
)
def test_bad_regions_are_refused(spec: str) -> None:
    with pytest.raises(InvalidOptionError, match="regions"):
        parse_regions(spec)


def test_regions_equal_their_unions_scored_directly() -> None:
    shape, spacing = (20, 22, 16), (0.8, 1.1, 1.7)
    pred, ref = blobs(shape, 3, 14), blobs(shape, 3, 15)
    regions = parse_regions("WT=1,2,3;TC=2,3;ET=3")
    options = BoundaryOptions(metrics=ALL, boundary_width=2.0)
    scores = boundary_scores(pred, ref, [1], options, spacing=spacing, regions=regions)
    assert [s.key for s in scores] == [1, "WT", "TC", "ET"]
    matrix = confusion_matrix(pred, ref)
    for score in scores[1:]:
        members = regions[str(score.key)]
        up, ur = np.isin(pred, members).astype(np.uint8), np.isin(ref, members).astype(np.uint8)
        direct = boundary_scores(up, ur, [1], options, spacing=spacing)[0]
        assert score.values == direct.values
        union = confusion_matrix(up, ur)
        assert matrix.union_counts(members) == union.counts(1)


def test_region_of_labels_absent_from_both_is_empty() -> None:
    pred = ref = blobs((10, 10, 10), 1, 16)
    score = boundary_scores(pred, ref, [], BoundaryOptions(), regions={"X": (4, 5)})[0]
    assert score.key == "X" and score.missing == "both empty"


# --- the torch path (the code that runs on CUDA, here on CPU tensors) ---------------------------


def torch_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = blobs((18, 20, 15), 3, seed), blobs((18, 20, 15), 3, seed + 100)
    pred[1:3, 1:3, 1:3] = 2  # a spurious part far from label 2's reference: beyond the lattice
    ref[15:17, 17:19, 12:14] = 3
    return pred, ref


@pytest.mark.parametrize("surface", ["voxel", "surfel"])
@pytest.mark.parametrize("mode", ["directed", "pooled"])
def test_torch_path_equals_numpy_path(surface: str, mode: str) -> None:
    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    pred, ref = torch_pair(17)
    pred[pred == 1] = 0  # label 1: prediction empty
    spacing = (0.8, 1.1, 1.7)
    options = BoundaryOptions(
        metrics=ALL, surface=surface, percentile_mode=mode, nsd_tolerance=1.5, boundary_width=2.0
    )
    regions = {"WT": (1, 2, 3), "TC": (2, 3)}
    expected = boundary_scores(pred, ref, [1, 2, 3, 4], options, spacing=spacing, regions=regions)
    got = boundary_scores_torch(
        torch.from_numpy(pred),
        torch.from_numpy(ref),
        [1, 2, 3, 4],
        options,
        spacing=spacing,
        regions=regions,
    )
    assert [s.missing for s in got] == ["prediction empty", None, None, "both empty", None, None]
    for a, b in zip(got, expected, strict=True):
        assert (a.key, a.reasons, a.surface_points) == (b.key, b.reasons, b.surface_points)
        assert a.values.keys() == b.values.keys()
        for metric, value in b.values.items():
            assert a.values[metric] == (None if value is None else pytest.approx(value, rel=1e-5))


def test_torch_region_label_beyond_the_dtype_does_not_wrap() -> None:
    """A region member (300) that a uint8 volume cannot hold must not match label 300 % 256."""
    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    pred = np.zeros((12, 12), np.uint8)
    pred[2:5, 2:5] = 1
    pred[7:10, 7:10] = 300 % 256
    ref = pred.copy()
    ref[7:10, 7:10] = 0
    options = BoundaryOptions(metrics=("hd",))
    torch_score = boundary_scores_torch(
        torch.from_numpy(pred), torch.from_numpy(ref), [], options, regions={"r": (1, 300)}
    )[0]
    assert torch_score.values == {"hd": 0.0}  # the label-44 square is not in the region
    numpy_score = boundary_scores(pred, ref, [], options, regions={"r": (1, 300)})[0]
    assert numpy_score.values == {"hd": 0.0}


def test_torch_far_points_use_the_brute_force_minimum() -> None:
    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    pred, ref = np.zeros((40, 30, 20), np.int64), np.zeros((40, 30, 20), np.int64)
    pred[2:6, 3:7, 2:5] = 1
    ref[30:37, 20:26, 12:18] = 1
    options = BoundaryOptions(metrics=DISTANCES, nsd_tolerance=2.0)
    spacing = (0.9, 1.2, 2.0)
    got = boundary_scores_torch(
        torch.from_numpy(pred), torch.from_numpy(ref), [1], options, spacing=spacing
    )[0]
    expected = brute_force(pred == 1, ref == 1, spacing, "voxel", "directed", 2.0)
    # float32 coordinates choose the nearest point; its distance is float64, as on the CPU
    assert got.values == pytest.approx(expected, rel=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("surface", ["voxel", "surfel"])
def test_cuda_boundary_scores_equal_the_cpu_path(surface: str) -> None:
    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    pred, ref = torch_pair(18)
    spacing = (0.8, 1.1, 1.7)
    options = BoundaryOptions(metrics=ALL, surface=surface, nsd_tolerance=1.5)
    expected = boundary_scores(
        pred, ref, [1, 2, 3], options, spacing=spacing, regions={"A": (2, 3)}
    )
    got = boundary_scores_torch(
        torch.from_numpy(pred).cuda(),
        torch.from_numpy(ref).cuda(),
        [1, 2, 3],
        options,
        spacing=spacing,
        regions={"A": (2, 3)},
    )
    for a, b in zip(got, expected, strict=True):
        assert (a.key, a.missing, a.surface_points) == (b.key, b.missing, b.surface_points)
        assert a.values == pytest.approx(b.values, rel=1e-4)


@pytest.mark.parametrize("shape", [(7,), (9, 8), (12, 11, 10), (6, 5, 4, 3)])
def test_borders_slab_by_slab_equal_scipy_erosion(shape: tuple[int, ...]) -> None:
    from monai_jdt.scoring.boundary import _borders

    mask = np.pad(np.random.default_rng(19).random(shape) < 0.7, 1)
    expected = mask & ~ndimage.binary_erosion(mask)
    for slab_voxels in (1, 7, 100, 1 << 21):  # one row per slab, a few, all at once
        np.testing.assert_array_equal(_borders(mask.copy(), slab_voxels), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.bool_])
def test_region_mask_equals_isin_for_every_dtype(dtype: type) -> None:
    from monai_jdt.scoring.regions import region_mask

    volume = np.random.default_rng(20).integers(0, 6, (5, 6, 7)).astype(dtype)
    for members in ((1,), (1, 3), (0, 2, 5, 300)):
        expected = np.isin(volume, members)
        np.testing.assert_array_equal(region_mask(volume, members), expected)
        out = np.zeros((7, 8, 9), dtype=bool)
        region_mask(volume, members, out=out[1:-1, 1:-1, 1:-1])
        np.testing.assert_array_equal(out[1:-1, 1:-1, 1:-1], expected)
        assert out.sum() == expected.sum()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_label_boxes_of_many_labels_equal_their_masks_boxes(dtype: type) -> None:
    from monai_jdt.scoring.boundary import label_boxes

    volume = blobs((30, 24, 20), 7, 21, density=0.003).astype(dtype)
    volume[volume == 5] = 0  # one label absent
    boxes = label_boxes(volume, list(range(1, 9)))  # one find_objects pass
    assert sorted(boxes) == [1, 2, 3, 4, 6, 7]
    for label, box in boxes.items():
        where = np.argwhere(volume == label)
        assert box == tuple(zip(where.min(0).tolist(), (where.max(0) + 1).tolist(), strict=True))
        assert label_boxes(volume, [label]) == {label: box}  # one comparison per label


@pytest.mark.parametrize(("step", "gap"), [(0.8, 7), (0.6, 9)])
def test_a_distance_past_the_lattice_search_is_the_one_scipy_gives_so_nsd_ties_hold(
    step: float, gap: int
) -> None:
    """Two voxels ``gap`` apart: past the lattice offsets, the nearest point comes from the
    KD-tree; its distance must be scipy EDT's float, so that ``d <= tau`` holds at
    ``tau = d`` (the tree's coordinate difference was 1 ulp larger: NSD 0 instead of 1)."""
    spacing = (step, step, step)
    pred = np.zeros((gap + 1, 1, 1), np.uint8)
    ref = np.zeros_like(pred)
    pred[gap], ref[0] = 1, 1
    edt = float(ndimage.distance_transform_edt(ref == 0, sampling=spacing)[gap, 0, 0])
    options = ScoringOptions(metrics="hd,nsd", nsd_tolerance=edt)
    row = score_arrays(pred, ref, options, spacing=spacing).label(1)
    assert row.metrics["hd"] == edt
    assert row.metrics["nsd"] == 1.0
    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    tensors = torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(ref.astype(np.int64))
    on_torch = boundary_scores_torch(
        *tensors, [1], BoundaryOptions(metrics=("hd", "nsd"), nsd_tolerance=edt), spacing=spacing
    )[0]
    assert on_torch.values == {"hd": edt, "nsd": 1.0}
