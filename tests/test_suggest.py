"""What to label next: the strategies on hand-made cases, ``interlude suggest``, the estimator's
``suggest``, and the loop back into training (``data.labels_file``, ``model.pretrained=RUN``)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import pairwise_distances

from interlude import InterLUDEClassifier
from interlude.artifact import Checkpoint
from interlude.cli import main
from interlude.config import load_config
from interlude.data import build_data
from interlude.errors import ConfigError, DataError
from interlude.files import csv_cell, read_csv_cell
from interlude.suggest import (
    entropy_scores,
    k_center_greedy,
    margin_scores,
    rank,
    suggest_run,
)

RUN = [
    "data.name=digits", "data.val_per_class=2", "model.width=8", "train.batch_size=8",
    "train.mu=2", "train.steps=8", "train.eval_interval=8", "train.log_interval=4",
    "train.checkpoint_interval=8", "train.progress=false", "train.device=cpu", "train.threads=1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *RUN, f"train.out_dir={out}", "train.run_name=first"]) == 0
    return out / "first"


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- strategies
def test_margin_ranks_a_two_way_tie_first_and_a_certain_row_last():
    p = np.array([[0.9, 0.05, 0.05],   # certain
                  [0.5, 0.5, 0.0],     # a tie between two classes: margin 0
                  [0.4, 0.3, 0.3],     # spread out, but top two 0.1 apart
                  [0.6, 0.4, 0.0]])
    np.testing.assert_allclose(margin_scores(p), [0.15, 1.0, 0.9, 0.8])
    assert rank("margin", p, None, 4).indices.tolist() == [1, 2, 3, 0]


def test_entropy_ranks_the_uniform_row_first_scaled_to_one():
    p = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(entropy_scores(p), [0.0, 1.0, 0.5])
    ranking = rank("entropy", p, None, 2)
    assert ranking.indices.tolist() == [1, 2]
    np.testing.assert_allclose(ranking.scores, [1.0, 0.5])


def test_ties_are_broken_by_the_lower_index():
    p = np.full((5, 2), 0.5)
    assert rank("margin", p, None, 3).indices.tolist() == [0, 1, 2]


def test_k_center_greedy_picks_farthest_first_on_a_line():
    points = np.array([[0.0], [1.0], [2.0], [10.0], [4.0]])
    chosen = k_center_greedy(points, 3, already_selected=[0])
    assert chosen.indices.tolist() == [3, 4, 2]  # 10 away, then 4 (6 from 10), then 2 (2 away)
    np.testing.assert_allclose(chosen.distances, [10.0, 4.0, 2.0])
    assert chosen.radius == pytest.approx(1.0)  # point 1 is 1 from its nearest centre


def test_k_center_greedy_without_centres_starts_farthest_from_the_mean():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    assert k_center_greedy(points, 1).indices.tolist() == [3]


def test_coreset_suggestions_are_never_closer_than_the_k_center_radius():
    embeddings = np.random.default_rng(0).normal(size=(400, 6))
    labeled = np.random.default_rng(1).normal(size=(5, 6))
    ranking = rank("coreset", np.full((400, 3), 1 / 3), embeddings, 25, labeled)
    chosen = embeddings[ranking.indices]
    centres = np.concatenate([chosen, labeled])
    radius = pairwise_distances(embeddings, centres).min(axis=1).max()
    pairwise = pairwise_distances(chosen)[np.triu_indices(len(chosen), 1)]
    assert len(set(ranking.indices.tolist())) == 25
    assert pairwise.min() >= radius - 1e-9
    assert pairwise_distances(chosen, labeled).min() >= radius - 1e-9
    assert np.all(np.diff(ranking.scores) <= 1e-12)  # each pick no farther than the one before


def test_hybrid_spreads_out_where_uncertainty_alone_picks_near_copies():
    """Ten near-copies of one confusing image (the most uncertain) and ten distinct images that
    are almost as uncertain: margin takes the copies, hybrid one copy and the distinct ones."""
    rng = np.random.default_rng(0)
    copies = np.array([1.0, 0.0]) + rng.normal(scale=1e-3, size=(10, 2))
    angles = np.linspace(0.5, 6, 10)
    distinct = 5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    confident = rng.normal(size=(30, 2)) * 5
    embeddings = np.concatenate([copies, distinct, confident])
    p_top = np.concatenate([np.full(10, 0.50), np.full(10, 0.55), np.full(30, 0.99)])
    p = np.stack([p_top, 1 - p_top], axis=1)
    assert set(rank("margin", p, embeddings, 5).indices.tolist()) <= set(range(10))
    hybrid = rank("hybrid", p, embeddings, 5, candidates=4)
    picked = hybrid.indices.tolist()
    assert sum(i < 10 for i in picked) == 1 and all(i < 20 for i in picked)
    np.testing.assert_allclose(hybrid.scores, margin_scores(p[hybrid.indices]))


def test_an_unknown_strategy_is_one_line():
    with pytest.raises(DataError, match="use one of margin, entropy, coreset, hybrid"):
        rank("confidence", np.full((2, 2), 0.5), None, 1)


def test_csv_cells_are_neutralised_and_read_back():
    assert csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)" and csv_cell(-1) == -1
    assert csv_cell("a.png") == "a.png"
    assert read_csv_cell(csv_cell("@x.png")) == "@x.png" and read_csv_cell("'quoted") == "'quoted"


# ----------------------------------------------------------------------------- interlude suggest
def test_suggest_cli_writes_a_csv_of_the_unlabeled_pool_and_a_contact_sheet(run_dir, tmp_path,
                                                                            capsys):
    out = tmp_path / "next"
    assert main(["suggest", str(run_dir), "--n", "12", "--strategy", "hybrid",
                 "--out", str(out)]) == 0
    rows = _rows(out / "suggestions.csv")
    assert list(rows[0]) == ["rank", "file", "index", "predicted", "confidence", "score", "label"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    split = json.loads((run_dir / "split.json").read_text())
    indices = [int(r["index"]) for r in rows]
    assert len(set(indices)) == 12
    assert not set(indices) & set(split["labeled"] + split["val"])  # only unlabeled images
    assert all(r["label"] == "" and r["predicted"] in "0123456789" for r in rows)
    assert all(0 < float(r["confidence"]) <= 1 for r in rows)
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.size[0] > 500 and sheet.size[1] > 100
        assert np.asarray(sheet.convert("L")).std() > 10  # images drawn, not a blank canvas
    assert capsys.readouterr().out.strip() == str(out / "suggestions.csv")


@pytest.mark.parametrize("strategy", ["margin", "entropy", "coreset", "hybrid"])
def test_suggestions_are_deterministic_for_a_given_run(run_dir, strategy):
    first = suggest_run(run_dir, 15, strategy, batch_size=64, progress=False)
    again = suggest_run(run_dir, 15, strategy, batch_size=7, progress=False)
    assert first.index.tolist() == again.index.tolist()
    np.testing.assert_allclose(first.scores, again.scores, rtol=1e-5, atol=1e-6)


def test_suggest_ranks_the_pool_as_the_pure_strategy_does(run_dir):
    """The CLI path is the strategy applied to the run's own predictions of its pool."""
    state = Checkpoint.load(run_dir / "checkpoints" / "last.pt")
    cfg = state.config.data
    cfg.split_file = str(run_dir / "split.json")
    data = build_data(cfg)
    from interlude.inference import predictor_from_checkpoint

    pool = data.unlabeled.images.read(np.arange(len(data.unlabeled)))
    p = predictor_from_checkpoint(state).predict_proba(pool)
    expected = rank("margin", p, None, 10).indices
    got = suggest_run(run_dir, 10, "margin", progress=False)
    assert got.rows.tolist() == expected.tolist()
    assert got.images.shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(got.images, data.unlabeled.images.read(expected))


def test_unreadable_files_are_skipped_and_reported(run_dir, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    digits = np.round(load_digits().images[:6] * (255 / 16)).astype(np.uint8)
    for i, image in enumerate(digits):
        Image.fromarray(image).save(folder / f"d{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="interlude"):
        assert main(["suggest", str(run_dir), str(folder), "--n", "4", "--out", str(out)]) == 0
    assert "1 file(s) could not be read" in caplog.text
    rows = _rows(out / "suggestions.csv")
    assert len(rows) == 4 and all(r["file"].endswith(".png") and "broken" not in r["file"]
                                  for r in rows)
    (skipped,) = _rows(out / "unreadable.csv")
    assert skipped["file"].endswith("broken.png") and "cannot read image" in skipped["error"]
    assert (out / "contact_sheet.png").is_file()


def test_suggest_refuses_bad_input_in_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["suggest", str(run_dir), str(tmp_path / "bad.png"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
    assert main(["suggest", str(run_dir), "--n", "0"]) == 2
    assert "--n must be positive" in capsys.readouterr().err
    assert main(["suggest", str(tmp_path / "nowhere")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["suggest", str(run_dir), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the loop
def _fill_true_labels(source, target, pool_labels):
    rows = _rows(source)
    for row in rows:
        row["label"] = str(pool_labels[int(row["index"])])
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_the_suggestions_csv_round_trips_into_a_new_run(run_dir, tmp_path, caplog):
    """suggest -> label -> train: the labeled rows join the split, with the labels given, and
    the new run starts from the previous run's weights."""
    out = tmp_path / "next"
    assert main(["suggest", str(run_dir), "--n", "10", "--out", str(out)]) == 0
    labels = tmp_path / "labels.csv"
    _fill_true_labels(out / "suggestions.csv", labels, _pool_labels())  # a simulated labeler
    with caplog.at_level(logging.INFO, logger="interlude"):
        assert main(["train", *RUN, f"train.out_dir={tmp_path}", "train.run_name=second",
                     f"data.split_file={run_dir / 'split.json'}", f"data.labels_file={labels}",
                     f"model.pretrained={run_dir}"]) == 0
    assert f"starting from the weights of {run_dir}" in caplog.text
    before = json.loads((run_dir / "split.json").read_text())
    after = json.loads((tmp_path / "second" / "split.json").read_text())
    added = {int(r["index"]) for r in _rows(labels)}
    assert set(after["labeled"]) == set(before["labeled"]) | added and len(added) == 10
    assert after["val"] == before["val"] and after["labels_file"] == str(labels)
    cfg = load_config(tmp_path / "second" / "config.yaml")
    data = build_data(cfg.data)
    assert len(data.labeled) == len(before["labeled"]) + 10
    assert len(data.unlabeled) == 1297 - len(after["labeled"]) - len(after["val"])


def _pool_labels():
    from interlude.data import load_raw

    return load_raw(load_config(None, ["data.name=digits"]).data).train.labels


def test_a_labels_file_label_wins_and_files_are_added(run_dir, tmp_path):
    split = json.loads((run_dir / "split.json").read_text())
    free = sorted(set(range(1297)) - set(split["labeled"]) - set(split["val"]))[:2]
    image = np.round(load_digits().images[0] * (255 / 16)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "=zero.png")  # a name a spreadsheet would run
    labels = tmp_path / "labels.csv"
    labels.write_text("file,index,label\n"
                      f",{free[0]},7\n,{free[1]},\n'=zero.png,,0\n")
    cfg = load_config(None, ["data.name=digits", "data.val_per_class=2",
                             f"data.split_file={run_dir / 'split.json'}",
                             f"data.labels_file={labels}"]).data
    data = build_data(cfg)
    assert len(data.labeled) == len(split["labeled"]) + 2  # the unlabeled row is ignored
    position = sorted(split["labeled"] + [free[0]]).index(free[0])
    assert data.labeled.labels[position] == 7
    assert data.labeled.labels[-1] == 0
    np.testing.assert_array_equal(data.labeled.images.read([-1])[0, 0], image)


@pytest.mark.parametrize("text,message", [
    ("index,label\n3,eleven\n", "line 2: unknown class 'eleven'"),
    ("index,label\n3,1\n3,2\n", "labeled twice with different classes"),
    ("index,label\n-3,1\n", "is not a non-negative integer"),
    ("index,label\n99999,1\n", "outside the training pool of 1297 images"),
    ("name,label\nx,1\n", "needs a 'label' column and a 'file' or 'index' column"),
    ("file,label\nmissing.png,1\n", "image not found"),
    ("index,label\n,1\n", "has neither a file nor an index"),
])
def test_a_bad_labels_file_is_one_line(tmp_path, text, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    cfg = load_config(None, ["data.name=digits", f"data.labels_file={labels}"]).data
    with pytest.raises(DataError, match=message) as error:
        build_data(cfg)
    assert "\n" not in str(error.value)


def test_a_validation_row_cannot_be_relabeled(run_dir, tmp_path):
    split = json.loads((run_dir / "split.json").read_text())
    labels = tmp_path / "labels.csv"
    labels.write_text(f"index,label\n{split['val'][0]},1\n")
    cfg = load_config(None, ["data.name=digits", "data.val_per_class=2",
                             f"data.split_file={run_dir / 'split.json'}",
                             f"data.labels_file={labels}"]).data
    with pytest.raises(DataError, match="is a validation image"):
        build_data(cfg)


def test_a_new_run_starts_from_an_exported_model_and_refuses_another_network(run_dir, tmp_path):
    from interlude.export import export_run
    from interlude.train import run

    exported = export_run(run_dir, "safetensors", str(tmp_path / "export"))
    cfg = load_config(None, [*RUN, f"train.out_dir={tmp_path}", "train.run_name=warm",
                             "train.steps=1", "train.eval_interval=1", "train.ema_decay=0",
                             "train.lr=1e-12", f"model.pretrained={exported}"])
    result = run(cfg)
    start = Checkpoint.load(run_dir / "checkpoints" / "last.pt").weights()
    for key, value in result.weights.model.items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, start[key], atol=1e-6, rtol=0)
    wider = load_config(None, [*RUN, f"train.out_dir={tmp_path}", "train.run_name=wider",
                               "model.width=12", f"model.pretrained={run_dir}"])
    with pytest.raises(ConfigError, match="another network"):
        run(wider)
    with pytest.raises(ConfigError, match="applies to timm backbones"):
        load_config(None, ["model.pretrained=true"])
    (tmp_path / "plain").mkdir()
    assert main(["train", *RUN, f"train.out_dir={tmp_path}", "train.run_name=x",
                 f"model.pretrained={tmp_path / 'plain'}"]) == 2


# ----------------------------------------------------------------------------- estimator
def test_estimator_suggest_is_the_shared_ranking_of_its_predictions():
    digits = load_digits()
    X, y = digits.images[:400], digits.target[:400].copy()
    y[40:] = -1
    clf = InterLUDEClassifier(steps=20, batch_size=8, mu=2, width=8, verbose=0, threads=1)
    clf.fit(X, y)
    pool = X[40:]
    indices, scores = clf.suggest(pool, n=8, strategy="margin")
    expected = rank("margin", clf.predict_proba(pool), None, 8)
    assert indices.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-5)
    for strategy in ("entropy", "coreset", "hybrid"):
        picked, _ = clf.suggest(pool, n=8, strategy=strategy, X_labeled=X[:40])
        again, _ = clf.suggest(pool, n=8, strategy=strategy, X_labeled=X[:40])
        assert len(set(picked.tolist())) == 8 and picked.tolist() == again.tolist()
        assert picked.max() < len(pool)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        clf.suggest(pool, n=0)


def test_the_image_folder_loop_names_files_and_does_not_suggest_them_again(tmp_path):
    """suggest on an imagefolder run (pool in the image cache) -> label files in the CSV -> a new
    run learns them, and its suggestions leave the files already labeled out."""
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    root = tmp_path / "data"
    for i in range(60):
        label = digits.target[i]
        folder = root / ("labeled" if i < 20 else "unlabeled") / (str(label) if i < 20 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize((16, 16)).save(folder / f"img{i:02d}.png")
    classes = sorted({str(digits.target[i]) for i in range(20)})
    folder_run = [*RUN[1:], "data.name=imagefolder", "data.val_per_class=0",
                  f"data.labeled_dir={root / 'labeled'}", f"data.unlabeled_dir={root / 'unlabeled'}",
                  "data.resolution=16", f"train.out_dir={tmp_path}"]
    assert main(["train", *folder_run, "train.run_name=one"]) == 0
    assert main(["suggest", str(tmp_path / "one"), "--n", "6", "--out", str(tmp_path / "s1")]) == 0
    rows = _rows(tmp_path / "s1" / "suggestions.csv")
    assert all(r["file"].startswith(str(root / "unlabeled")) for r in rows)
    for row in rows:  # the simulated labeler reads the class off the file name's digit
        number = int(row["file"][-6:-4])
        row["label"] = str(digits.target[number]) if str(digits.target[number]) in classes else ""
    labeled_files = {r["file"] for r in rows if r["label"]}
    assert labeled_files
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["train", *folder_run, "train.run_name=two",
                 f"data.labels_file={tmp_path / 'labels.csv'}",
                 f"model.pretrained={tmp_path / 'one'}"]) == 0
    data = build_data(load_config(tmp_path / "two" / "config.yaml").data)
    assert len(data.labeled) == 20 + len(labeled_files)
    again = suggest_run(tmp_path / "two", 40, "margin", progress=False)
    assert not labeled_files & set(again.files)
    assert len(again) == 40 - len(labeled_files)
