"""Manifest loading and validation: every bad input gives a clear error naming file, line, field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ffr.data.manifest import CARD_FILE, DatasetCard, Manifest, ManifestError, validate


def _rewrite(root, fn):
    path = root / "manifest.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)
    return path


def test_roundtrip_and_counts(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 3, ("train", "dog", "outdoor"): 2, ("test", "cat", "outdoor"): 1})
    m = Manifest.load(root)
    assert len(m) == 6
    assert m.group_counts() == {("cat", "indoor"): 3, ("cat", "outdoor"): 1, ("dog", "indoor"): 0, ("dog", "outdoor"): 2}
    assert m.select(split="train").group_counts()[("cat", "outdoor")] == 0
    assert list(m.groups()[:3]) == [0, 0, 0]
    # digest is stable across row order and changes with content
    shuffled = Manifest(m.frame.sample(frac=1, random_state=0), m.card, m.root)
    assert shuffled.digest() == m.digest()
    changed = Manifest(m.frame.assign(split="val"), m.card, m.root)
    assert changed.digest() != m.digest()


def test_save_elsewhere_keeps_paths_resolvable(make_dataset, tmp_path):
    root = make_dataset({("train", "cat", "indoor"): 2})
    m = Manifest.load(root)
    m.save(tmp_path / "elsewhere" / "deeper")
    m2 = Manifest.load(tmp_path / "elsewhere" / "deeper")
    assert [p.resolve() for p in m2.abs_paths()] == [p.resolve() for p in m.abs_paths()]


def test_missing_columns(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 1})
    path = _rewrite(root, lambda df: df.drop(columns=["bias", "split"]))
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    msg = str(e.value)
    assert str(path) in msg and "missing column 'bias'" in msg and "missing column 'split'" in msg


def test_unknown_label_and_bias_name_the_line(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 3})

    def bad(df):
        df.loc[1, "label"] = "horse"
        df.loc[2, "bias"] = "underwater"
        return df
    _rewrite(root, bad)
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    msg = str(e.value)
    assert "line 3: label 'horse' is not a class" in msg
    assert "line 4: bias 'underwater' is not a bias value" in msg
    assert len(e.value.problems) == 2


def test_path_escaping_root(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 2})

    def bad(df):
        df.loc[0, "path"] = "../outside.png"
        df.loc[1, "path"] = "/etc/passwd"
        return df
    _rewrite(root, bad)
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    assert "line 2: path '../outside.png' escapes the dataset root" in str(e.value)
    assert "line 3: path '/etc/passwd' must be relative" in str(e.value)


def test_every_missing_and_unreadable_file_is_listed(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 4})
    (root / "train/cat/indoor/0000.png").unlink()
    (root / "train/cat/indoor/0002.png").unlink()
    (root / "train/cat/indoor/0003.png").write_bytes(b"not a png")
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    probs = e.value.problems
    assert len(probs) == 3
    assert any("0000.png" in p and "not found" in p for p in probs)
    assert any("0002.png" in p and "not found" in p for p in probs)
    assert any("0003.png" in p and "unreadable" in p for p in probs)
    # the files that are fine are untouched, and the check can be skipped
    assert (root / "train/cat/indoor/0001.png").is_file()
    assert len(Manifest.load(root, check_files=False)) == 4


def test_duplicate_paths_and_image_in_two_splits(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 2, ("test", "cat", "indoor"): 2})

    def bad(df):
        dup = df.iloc[[0]].copy()            # same path, same split: duplicate
        moved = df.iloc[[1]].copy()
        moved["split"] = "val"               # same path in two splits
        return pd.concat([df, dup, moved], ignore_index=True)
    _rewrite(root, bad)
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    msg = str(e.value)
    assert "duplicate path 'train/cat/indoor/0000.png' (first at line 2)" in msg
    assert "is in split 'val' and in split 'train'" in msg


def test_same_content_in_two_splits_is_caught(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 1, ("test", "cat", "indoor"): 1})
    (root / "test/cat/indoor/0000.png").write_bytes((root / "train/cat/indoor/0000.png").read_bytes())
    with pytest.raises(ManifestError, match="an image is in two splits"):
        Manifest.load(root)


def test_bad_split_source_and_synthetic_without_generator(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 3})

    def bad(df):
        df.loc[0, "split"] = "training"
        df.loc[1, "source"] = "fake"
        df.loc[2, "source"] = "synthetic"
        return df
    _rewrite(root, bad)
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    msg = str(e.value)
    assert "line 2: split 'training' is not one of" in msg
    assert "line 3: source 'fake' is not one of" in msg
    assert "line 4: synthetic row has no 'generator'" in msg


def test_card_errors(tmp_path, card):
    with pytest.raises(ManifestError, match="no entry for class 'dog'"):
        DatasetCard(name="x", classes=["cat", "dog"], bias_values=["a", "b"], majority_bias={"cat": "a"})
    with pytest.raises(ManifestError, match="repeats"):
        DatasetCard(name="x", classes=["cat", "cat"], bias_values=["a", "b"])
    path = tmp_path / CARD_FILE
    path.write_text(json.dumps({"name": "x", "classes": ["a", "b"], "colour": 1}))
    with pytest.raises(ManifestError) as e:
        DatasetCard.load(path)
    assert str(path) in str(e.value) and "missing field 'bias_values'" in str(e.value)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        DatasetCard.load(path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        Manifest.load(tmp_path / "nope")
    (tmp_path / "manifest.csv").write_text("path,label,bias,split,source\n")
    with pytest.raises(FileNotFoundError, match="card.json"):
        Manifest.load(tmp_path)


def test_concat_rebases_onto_common_root(make_dataset, card):
    a = Manifest.load(make_dataset({("train", "cat", "indoor"): 1}, name="a"))
    b = Manifest.load(make_dataset({("train", "dog", "outdoor"): 1}, name="b"))
    both = Manifest.concat([a, b])
    assert both.root == a.root.parent
    assert list(both.frame["path"]) == ["a/train/cat/indoor/0000.png", "b/train/dog/outdoor/0000.png"]
    validate(both)
