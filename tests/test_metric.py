"""The xView3 metric and top-k accuracy on crafted cases whose expected values are worked out by
hand in each test (pixel size 10 m, tolerance 200 m, shore 2 km unless said)."""

import csv
import itertools
import json
import math

import numpy as np
import pytest

from xtstream.cli import main
from xtstream.errors import LabelError
from xtstream.tasks.classification.metric import topk
from xtstream.tasks.xview3.metric import (GT_COLUMNS, PRED_COLUMNS, _hungarian, check_scenes, f1,
                                          length_score, match_scene, read_ground_truth, read_predictions,
                                          read_shorelines, score)

COMPONENTS = ["aggregate", "F1_loc", "F1_shore", "F1_vessel", "F1_fishing", "length_score"]


def gt_row(r, c, *, scene="s", vessel=1.0, fishing=0.0, length=50.0, shore_km=9.0, conf="HIGH"):
    return dict(scene_id=scene, detect_scene_row=float(r), detect_scene_column=float(c), is_vessel=vessel,
                is_fishing=fishing, vessel_length_m=length, distance_from_shore_km=shore_km, confidence=conf)


def pred_row(r, c, *, scene="s", vessel=1.0, fishing=0.0, length=50.0):
    return dict(scene_id=scene, detect_scene_row=float(r), detect_scene_column=float(c), is_vessel=vessel,
                is_fishing=fishing, vessel_length_m=length)


def as_pred(g, dr=0, dc=0):
    return pred_row(g["detect_scene_row"] + dr, g["detect_scene_column"] + dc, scene=g["scene_id"],
                    vessel=g["is_vessel"], fishing=0.0 if math.isnan(g["is_fishing"]) else g["is_fishing"],
                    length=0.0 if math.isnan(g["vessel_length_m"]) else g["vessel_length_m"])


#: a shoreline along column 0 (rows 0..2000): distance to shore = column × 10 m
SHORE = {"s": np.stack([np.arange(0, 2001), np.zeros(2001)], axis=1).astype(float)}


def scene_gt():
    """One object of each kind: close to shore (0.5 km), offshore vessels fishing/not, a non-vessel."""
    return [gt_row(100, 50, fishing=1.0, length=30.0, shore_km=0.5),
            gt_row(300, 900, fishing=0.0, length=120.0),
            gt_row(600, 1500, vessel=0.0, fishing=math.nan, length=math.nan),
            gt_row(1200, 700, fishing=1.0, length=20.0, shore_km=7.0)]


# ---------------------------------------------------------------------------------------- matching
def test_hungarian_is_the_minimum_over_every_assignment():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = map(int, rng.integers(1, 6, 2))
        cost = np.round(rng.random((n, m)) * 10, 1)  # rounded: ties too
        pairs = _hungarian(cost)
        assert len(pairs) == min(n, m) and len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
        if n <= m:
            best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = min(sum(cost[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(best)


def test_hungarian_not_greedy_finds_both_matches():
    # gt at columns 0 and 30; pred A at 12 (120 m / 180 m), pred B at -5 (50 m / 350 m). Taking A's
    # nearest (gt 0) first would leave B unmatched; the assignment pairs A-gt30, B-gt0: 2 TPs
    pairs = match_scene(np.array([[0, 12], [0, -5]]), np.array([[0, 0], [0, 30]]))
    assert [(p, g) for p, g, _ in pairs] == [(0, 1), (1, 0)]
    assert [d for *_, d in pairs] == pytest.approx([180.0, 50.0])


def test_19_px_counts_21_px_does_not_and_20_px_is_not_strictly_below():
    gt = [gt_row(0, 0), gt_row(1000, 0), gt_row(2000, 0)]
    preds = [pred_row(19, 0), pred_row(1021, 0), pred_row(2000, 20)]  # 190 m, 210 m, 200 m
    out = score(preds, gt)
    # tp 1, fp 2, fn 2: P = R = 1/3, F1 = 1/3
    assert (out["tp"], out["fp"], out["fn"]) == (1, 2, 2)
    assert out["F1_loc"] == pytest.approx(1 / 3)
    assert match_scene(np.array([[0, 19]]), np.array([[0, 0]]))[0][2] == pytest.approx(190.0)
    assert match_scene(np.array([[0, 21]]), np.array([[0, 0]])) == []


def test_f1_zero_denominators_give_zero():
    assert f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert f1(2, 2, 0) == pytest.approx((0.5, 1.0, 2 / 3))


# ------------------------------------------------------------------------------------------ score
def test_perfect_predictions_score_one_everywhere():
    gt = scene_gt()
    out = score([as_pred(g) for g in gt], gt, SHORE)
    for k in COMPONENTS:
        assert out[k] == pytest.approx(1.0), k
    assert (out["tp"], out["fp"], out["fn"]) == (4, 0, 0)


def test_predictions_moved_250_m_score_zero():
    gt = scene_gt()
    out = score([as_pred(g, dr=25) for g in gt], gt, SHORE)  # 25 px = 250 m > 200 m
    for k in COMPONENTS:
        assert out[k] == 0.0, k
    assert (out["tp"], out["fp"], out["fn"]) == (0, 4, 4)


def test_shore_and_offshore_split():
    gt = [gt_row(500, 100, fishing=1.0, shore_km=1.0),   # close, found
          gt_row(800, 150, fishing=1.0, shore_km=1.5),   # close, missed
          gt_row(1500, 800, fishing=1.0, shore_km=8.0)]  # offshore, found
    preds = [as_pred(gt[0]), as_pred(gt[2]),
             pred_row(1200, 210),   # false positive 2.1 km from shore: within 2 km + 200 m -> shore FP
             pred_row(1800, 400)]   # false positive 4 km out: offshore only
    out = score(preds, gt, SHORE)
    # all: tp 2, fp 2, fn 1 -> P 1/2, R 2/3, F1 = 2 (1/3) / (7/6) = 4/7
    assert (out["tp"], out["fp"], out["fn"]) == (2, 2, 1)
    assert out["F1_loc"] == pytest.approx(4 / 7)
    # shore: gt {0, 1}, preds {gt0's, the 2.1 km one}: tp 1, fp 1, fn 1 -> 1/2
    assert (out["precision_shore"], out["recall_shore"], out["F1_shore"]) == pytest.approx((0.5, 0.5, 0.5))
    assert out["F1_vessel"] == out["F1_fishing"] == out["length_score"] == 1.0
    assert out["aggregate"] == pytest.approx(4 / 7 * (1 + 1 + 1 + 1 + 0.5) / 5)
    # without shorelines the shore score is 0, as the reference without a shore root
    assert score(preds, gt)["F1_shore"] == 0.0


def test_prediction_at_exactly_2_2_km_is_close_to_shore():
    gt = [gt_row(500, 200, shore_km=2.0)]  # 2 km: close (<=)
    out = score([pred_row(500, 220)], gt, SHORE)  # 200 m off: not a match, but close to shore
    assert (out["tp"], out["fp"], out["fn"]) == (0, 1, 1)
    assert out["F1_shore"] == 0.0 and out["precision_shore"] == 0.0
    out = score([pred_row(500, 219)], gt, SHORE)  # 190 m, 2.19 km: a shore match
    assert out["F1_shore"] == 1.0


def test_scene_without_shoreline_is_left_out_of_the_shore_score():
    gt = [gt_row(500, 100, shore_km=1.0), gt_row(500, 100, scene="t", shore_km=1.0)]
    preds = [as_pred(gt[0]), pred_row(900, 900, scene="t")]
    out = score(preds, gt, SHORE)  # scene t has no shoreline: its miss is not a shore miss
    assert out["shore_skipped_scenes"] == ["t"]
    assert out["F1_shore"] == 1.0
    assert out["F1_loc"] == pytest.approx(0.5)  # but it is a miss overall: tp 1, fp 1, fn 1


def test_classification_f1s_over_matched_pairs():
    gt = [gt_row(0, 0, vessel=1.0, fishing=1.0), gt_row(1000, 0, vessel=1.0, fishing=0.0),
          gt_row(2000, 0, vessel=0.0, fishing=0.0), gt_row(3000, 0, vessel=math.nan, fishing=1.0)]
    preds = [pred_row(0, 0, vessel=1.0, fishing=1.0), pred_row(1000, 0, vessel=0.0, fishing=1.0),
             pred_row(2000, 0, vessel=1.0, fishing=1.0), pred_row(3000, 0, vessel=1.0, fishing=0.0)]
    out = score(preds, gt)
    # vessel (unknown gt skipped): tp 1 (#0), fn 1 (#1), fp 1 (#2) -> 1/2
    assert out["F1_vessel"] == pytest.approx(0.5)
    # fishing, gt vessels only (#0, #1): tp 1, fp 1 -> P 1/2, R 1 -> 2/3
    assert out["F1_fishing"] == pytest.approx(2 / 3)


def test_low_confidence_objects():
    gt = [gt_row(100, 100, conf="HIGH"), gt_row(500, 500, conf="LOW"), gt_row(900, 900, conf="MEDIUM")]
    preds = [as_pred(gt[0]), as_pred(gt[1]), as_pred(gt[2])]
    # default: LOW not scored, its prediction is a false positive: tp 2, fp 1 -> P 2/3, R 1 -> 4/5
    assert score(preds, gt)["F1_loc"] == pytest.approx(0.8)
    # --drop-low: the prediction matched to the LOW object is dropped first
    out = score(preds, gt, drop_low=True)
    assert (out["tp"], out["fp"], out["fn"]) == (2, 0, 0) and out["F1_loc"] == 1.0
    # --score-all: the LOW object is scored, and found
    assert score(preds, gt, score_all=True)["tp"] == 3
    assert score(preds[:1], gt, score_all=True)["fn"] == 2


def test_length_score_caps_at_500_m():
    assert length_score([900.0], [600.0]) == 1.0            # both capped at 500: no error
    assert length_score([900.0], [400.0]) == pytest.approx(0.75)  # |500 - 400| / 400
    assert length_score([900.0, 900.0, 1.0], [600.0, 400.0, math.nan]) == pytest.approx(1 - 0.125)
    assert length_score([100.0], [10.0]) == 0.0             # error 9 -> min(9, 1)
    assert length_score([], []) == 0.0
    gt = [gt_row(0, 0, length=600.0), gt_row(1000, 0, length=400.0)]
    out = score([pred_row(0, 0, length=900.0), pred_row(1000, 0, length=900.0)], gt)
    assert out["length_score"] == pytest.approx(0.875)


def test_empty_predictions_score_zero():
    gt = scene_gt()
    out = score([], gt, SHORE)
    for k in COMPONENTS:
        assert out[k] == 0.0, k
    assert (out["tp"], out["fp"], out["fn"]) == (0, 0, 4)


# ---------------------------------------------------------------------------------------- reading
def write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return path


def test_read_round_trip(tmp_path):
    gt = scene_gt()
    g = read_ground_truth(write_csv(tmp_path / "gt.csv", GT_COLUMNS, gt))
    p = read_predictions(write_csv(tmp_path / "p.csv", PRED_COLUMNS + ["score"], [as_pred(x) for x in gt]))
    assert math.isnan(g[2]["is_fishing"]) and math.isnan(g[2]["vessel_length_m"]) and g[0]["is_vessel"] == 1.0
    assert score(p, g, SHORE)["aggregate"] == pytest.approx(1.0)


@pytest.mark.parametrize("columns, row, message", [
    (["scene_id", "detect_scene_row", "is_vessel", "is_fishing", "vessel_length_m"], {}, "detect_scene_column"),
    (PRED_COLUMNS, {"detect_scene_row": "abc"}, "line 3: detect_scene_row must be a number, got 'abc'"),
    (PRED_COLUMNS, {"vessel_length_m": "nan"}, "line 3: vessel_length_m must be a finite number"),
    (PRED_COLUMNS, {"vessel_length_m": ""}, "line 3: vessel_length_m must be a finite number"),
    (PRED_COLUMNS, {"is_vessel": "maybe"}, "line 3: is_vessel must be True or False"),
])
def test_bad_predictions_name_file_and_line(tmp_path, columns, row, message):
    good = {**pred_row(1, 2), "is_vessel": "True", "is_fishing": "False"}
    path = write_csv(tmp_path / "bad.csv", columns, [good, {**good, **row}])
    with pytest.raises(LabelError, match="bad.csv") as err:
        read_predictions(path)
    assert message in str(err.value)


def test_prediction_scene_absent_from_ground_truth(tmp_path):
    preds = read_predictions(write_csv(tmp_path / "p.csv", PRED_COLUMNS, [pred_row(0, 0), pred_row(0, 0, scene="x")]))
    with pytest.raises(LabelError, match=r"p.csv line 3: scene 'x' is not in the ground truth"):
        check_scenes(preds, [gt_row(0, 0)], tmp_path / "p.csv")


def test_bad_ground_truth(tmp_path):
    path = write_csv(tmp_path / "gt.csv", GT_COLUMNS, [gt_row(0, 0, conf="SURE")])
    with pytest.raises(LabelError, match="gt.csv line 2: confidence must be one of"):
        read_ground_truth(path)


def test_shorelines_read_plain_and_contour_layouts(tmp_path):
    np.save(tmp_path / "a_shoreline.npy", np.array([[1.0, 2.0], [3.0, 4.0]]))
    contours = np.empty(2, dtype=object)
    contours[0], contours[1] = np.array([[0.0, 0.0]]), np.array([[5.0, 5.0], [6.0, 6.0]])
    np.save(tmp_path / "b_shoreline.npy", contours, allow_pickle=True)
    with pytest.raises(LabelError, match=r"b_shoreline.npy: a pickled array.*allow_pickle=True"):
        read_shorelines(tmp_path, ["a", "b"])  # never unpickled unless asked
    with pytest.warns(UserWarning, match=r"1 scene\(s\) have no shoreline file.*\['c'\]"):
        lines, missing = read_shorelines(tmp_path, ["a", "b", "c"], allow_pickle=True)
    assert lines["a"].shape == (2, 2) and lines["b"].shape == (3, 2) and missing == ["c"]


def test_synthetic_scene_labels_score_one_against_themselves(small_scene):
    gt = read_ground_truth(small_scene.labels)
    lines, missing = read_shorelines(small_scene.directory, [small_scene.scene_id])
    assert not missing and lines[small_scene.scene_id].shape[1] == 2
    out = score([as_pred(g) for g in gt], gt, lines, score_all=True)
    assert out["F1_loc"] == 1.0 and out["length_score"] == pytest.approx(1.0)
    # the synthetic shoreline is (N, 2) row/col: objects it calls close to shore are found close
    assert any(g["distance_from_shore_km"] <= 2 for g in gt) and out["F1_shore"] == 1.0


# -------------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(tmp_path, capsys):
    gt = scene_gt() + [gt_row(100, 100, scene="t")]
    write_csv(tmp_path / "gt.csv", GT_COLUMNS, gt)
    write_csv(tmp_path / "p.csv", PRED_COLUMNS, [as_pred(g) for g in gt])
    shore = tmp_path / "shore"
    shore.mkdir()
    np.save(shore / "s_shoreline.npy", SHORE["s"])
    code = main(["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "gt.csv"), "--shoreline-dir", str(shore),
                 "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("no shoreline file") == 1 and "left out of F1_shore: t" in out
    for k in COMPONENTS:
        assert f"{k}" in out
    assert "aggregate" in out and "1.000000" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["aggregate"] == pytest.approx(1.0) and saved["shore_skipped_scenes"] == ["t"]


def test_cli_errors_exit_2_naming_the_file(tmp_path, capsys):
    write_csv(tmp_path / "gt.csv", GT_COLUMNS, [gt_row(0, 0)])
    write_csv(tmp_path / "p.csv", PRED_COLUMNS, [pred_row(0, 0, scene="typo")])
    assert main(["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "gt.csv")]) == 2
    assert "p.csv line 2: scene 'typo' is not in the ground truth" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # contradictory options are refused by argparse
        main(["evaluate", "p.csv", "gt.csv", "--score-all", "--drop-low"])


# --------------------------------------------------------------------------------- classification
def test_topk(tmp_path, capsys):
    write_csv(tmp_path / "gt.csv", ["scene_id", "label"],
              [{"scene_id": s, "label": lab} for s, lab in zip("abcd", ["1", "2", "3", "4"])])
    cols = ["scene_id"] + [f"top{k}" for k in range(1, 6)]
    rows = [["a", 1, 2, 3, 4, 5], ["b", 2, 1, 3, 4, 5], ["c", 1, 2, 4, 5, 3.0], ["d", 1, 2, 3, 5, 6]]
    write_csv(tmp_path / "p.csv", cols, [dict(zip(cols, r)) for r in rows])
    # top1: a, b hit -> 2/4; top5: a, b, c ("3.0" is class 3) -> 3/4
    out = topk(tmp_path / "p.csv", tmp_path / "gt.csv")
    assert (out["top1"], out["top5"], out["scenes"], out["columns"]) == (0.5, 0.75, 4, 5)
    assert main(["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "gt.csv"), "--task", "classification"]) == 0
    assert "top5" in capsys.readouterr().out
    write_csv(tmp_path / "short.csv", cols, [dict(zip(cols, r)) for r in rows[:3]])
    with pytest.raises(LabelError, match=r"short.csv: no prediction for ground-truth scene\(s\) \['d'\]"):
        topk(tmp_path / "short.csv", tmp_path / "gt.csv")
