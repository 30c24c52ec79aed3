"""Adapters of the public benchmarks, each on a small fixture written in the exact on-disk format
of the distribution, including malformed files."""

from __future__ import annotations

import pytest

from helpers import write_png
from ffr.cli import main
from ffr.data.sources import load_dataset
from ffr.data.public import auto_majority, stratified_split
from ffr.data.manifest import Manifest, ManifestError

CELEBA_ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


# ------------------------------------------------------------------------------ Waterbirds
def make_waterbirds(root, rows):
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (fname, y, split, place) in enumerate(rows, start=1):
        write_png(root / fname, i)
        lines.append(f"{i},{fname},{y},{split},{place},/b/bamboo_forest/00000{i}.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_waterbirds(tmp_path):
    make_waterbirds(tmp_path, [
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, 0, 1),
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0074_59.jpg", 1, 1, 0),
        ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0001_86.jpg", 0, 0, 0),
        ("094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0002_20.jpg", 0, 2, 1),
    ])
    m = load_dataset("waterbirds", tmp_path)
    f = m.frame.set_index("path")
    assert f.loc["001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", ["label", "bias", "split"]].tolist() \
        == ["waterbird", "water", "train"]
    assert f.loc["094.White_breasted_Nuthatch/White_Breasted_Nuthatch_0002_20.jpg", ["label", "bias", "split"]].tolist() \
        == ["landbird", "water", "test"]
    assert m.card.majority_bias == {"landbird": "land", "waterbird": "water"}
    assert m.select(split="val").group_counts()[("waterbird", "land")] == 1


def test_waterbirds_malformed(tmp_path):
    make_waterbirds(tmp_path, [("a/1.jpg", 1, 0, 1), ("a/2.jpg", 2, 0, 1), ("a/3.jpg", 0, 5, 0)])
    with pytest.raises(ManifestError) as e:
        load_dataset("waterbirds", tmp_path)
    msg = str(e.value)
    assert "metadata.csv" in msg and "line 3: field 'y' is '2'" in msg and "line 4: field 'split' is '5'" in msg
    (tmp_path / "metadata.csv").write_text("img_id,img_filename,y\n1,a/1.jpg,1\n")
    with pytest.raises(ManifestError, match=r"line 1: missing column\(s\) \['split', 'place'\]"):
        load_dataset("waterbirds", tmp_path)
    (tmp_path / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        load_dataset("waterbirds", tmp_path)


def test_waterbirds_missing_image(tmp_path):
    make_waterbirds(tmp_path, [("a/1.jpg", 1, 0, 1), ("a/2.jpg", 0, 0, 0)])
    (tmp_path / "a/2.jpg").unlink()
    with pytest.raises(ManifestError, match="image file not found.*a/2.jpg"):
        load_dataset("waterbirds", tmp_path)
    assert len(load_dataset("waterbirds", tmp_path, check_files=False)) == 2


# ------------------------------------------------------------------------------ CelebA
def attr_line(name, values):
    # the distribution right-aligns each value in a 3-character column: "-1" and " 1"
    return name + "".join(f"{v:>3}" for v in values)


def make_attr_file(path, images: dict[str, dict[str, int]], count=None):
    lines = [str(len(images) if count is None else count), " ".join(CELEBA_ATTRS) + " "]
    for name, attrs in images.items():
        lines.append(attr_line(name, [attrs.get(a, -1) for a in CELEBA_ATTRS]))
    path.write_text("\n".join(lines) + "\n")


CELEBA_IMAGES = {  # name: (Smiling, Male, Blond_Hair, partition)
    "000001.jpg": (1, -1, 1, 0), "000002.jpg": (1, -1, -1, 0), "000003.jpg": (-1, 1, -1, 0),
    "000004.jpg": (-1, -1, 1, 1), "000005.jpg": (1, 1, -1, 1), "000006.jpg": (-1, 1, -1, 2),
    "000007.jpg": (1, -1, -1, 2),
}


def make_celeba(root):
    for i, name in enumerate(CELEBA_IMAGES):
        write_png(root / "img_align_celeba" / name, i)
    make_attr_file(root / "list_attr_celeba.txt",
                   {n: {"Smiling": s, "Male": m, "Blond_Hair": b} for n, (s, m, b, _) in CELEBA_IMAGES.items()})
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, (_, _, _, p) in CELEBA_IMAGES.items()))


def test_celeba(tmp_path):
    make_celeba(tmp_path)
    m = load_dataset("celeba", tmp_path)
    assert m.card.classes == ["not_smiling", "smiling"] and m.card.bias_values == ["female", "male"]
    f = m.frame.set_index("path")
    assert f.loc["img_align_celeba/000001.jpg", ["label", "bias", "split"]].tolist() == ["smiling", "female", "train"]
    assert f.loc["img_align_celeba/000006.jpg", ["label", "bias", "split"]].tolist() == ["not_smiling", "male", "test"]
    # smiling is mostly female here: opposite majority for not smiling
    assert m.card.majority_bias == {"smiling": "female", "not_smiling": "male"}
    # any two attributes, custom names and majorities
    m = load_dataset("celeba", tmp_path, label="Blond_Hair", bias="Smiling", label_names=["dark", "blond"],
                     majority_bias={"dark": "smiling", "blond": "not_smiling"})
    assert m.card.classes == ["dark", "blond"] and m.card.bias_name == "Smiling"
    assert m.frame.set_index("path").loc["img_align_celeba/000004.jpg", "label"] == "blond"


def test_celeba_malformed(tmp_path):
    make_celeba(tmp_path)
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace(" 1", " 2", 1)        # image 3: a value that is not ±1
    lines[6] = lines[6].rsplit(" ", 1)[0]             # image 5: one value short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as e:
        load_dataset("celeba", tmp_path)
    msg = str(e.value)
    assert "list_attr_celeba.txt" in msg and "line 5: values must be -1 or 1" in msg
    assert "line 7: expected an image name and 40 values, got 40 fields" in msg
    make_celeba(tmp_path)
    make_attr_file(path, {n: {} for n in CELEBA_IMAGES}, count=99)
    with pytest.raises(ManifestError, match="line 1: says 99 images, the file lists 7"):
        load_dataset("celeba", tmp_path)
    make_celeba(tmp_path)
    with pytest.raises(ManifestError, match="line 2: no attribute 'Smilling'"):
        load_dataset("celeba", tmp_path, label="Smilling")
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(ManifestError, match=r"list_eval_partition.txt.*\n.*line 2: expected '<image> 0\|1\|2'"):
        load_dataset("celeba", tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(ManifestError, match="image '000002.jpg' of list_attr_celeba.txt has no split"):
        load_dataset("celeba", tmp_path)


def make_celeba_hq(root, n=40):
    images = {}
    for i in range(n):
        write_png(root / "CelebA-HQ-img" / f"{i}.jpg", 100 + i)
        images[f"{i}.jpg"] = {"Smiling": 1 if i % 2 else -1, "Male": 1 if i % 5 == 0 else -1}
    make_attr_file(root / "CelebAMask-HQ-attribute-anno.txt", images)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n" + "".join(f"{i} {1000 + i} {1001 + i:06d}.jpg\n" for i in range(n)))
    (root / "list_eval_partition.txt").write_text("".join(f"{1001 + i:06d}.jpg {i % 3}\n" for i in range(n)))


def test_celeba_hq_split_by_mapping_or_seeded(tmp_path):
    make_celeba_hq(tmp_path)
    m = load_dataset("celeba_hq", tmp_path, partition_file="list_eval_partition.txt")
    f = m.frame.set_index("path")
    assert f.loc["CelebA-HQ-img/4.jpg", "split"] == "val" and f.loc["CelebA-HQ-img/5.jpg", "split"] == "test"
    a = load_dataset("celeba_hq", tmp_path, split_seed=3)
    b = load_dataset("celeba_hq", tmp_path, split_seed=3)
    assert a.frame["split"].tolist() == b.frame["split"].tolist()
    counts = a.frame.groupby(["label", "bias", "split"]).size()
    assert counts[("not_smiling", "female", "train")] == 13  # 16 rows: 0.8 * 16 = 12.8 → 13
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 1000 001001.jpg\nx 1 2\n")
    with pytest.raises(ManifestError, match="mapping.txt.*\n.*line 3: expected '<idx> <orig_idx> <orig_file>'"):
        load_dataset("celeba_hq", tmp_path, partition_file="list_eval_partition.txt")


# ------------------------------------------------------------------------------ UTKFace
def test_utkface(tmp_path):
    names = []
    for i in range(40):
        age = [1, 3, 25, 40, 60, 12][i % 6]
        names.append(f"{age}_{i % 2}_{i % 5}_2017011{i:09d}.jpg.chip.jpg")
    names.append("39_1_20170116174525125.jpg.chip.jpg")  # the distribution's names without a race
    for i, n in enumerate(names):
        write_png(tmp_path / n, i)
    m = load_dataset("utkface", tmp_path)
    f = m.frame.set_index("path")
    assert f.loc["39_1_20170116174525125.jpg.chip.jpg", ["label", "bias"]].tolist() == ["female", "old"]
    assert f.loc[names[0], ["label", "bias"]].tolist() == ["male", "young"]
    assert not any(p.startswith(("60_", "12_")) for p in m.frame["path"])   # outside both age groups
    assert len(m) == 41 - 12   # 6 rows aged 60 and 6 aged 12 are left out
    assert set(m.frame["split"]) == {"train", "val", "test"}
    assert m.card.bias_name == "age" and set(m.card.majority_bias) == {"male", "female"}
    assert m.card.majority_bias["male"] != m.card.majority_bias["female"]
    assert load_dataset("utkface", tmp_path, young=[0, 3], old=[20, 30]).frame["path"].str.startswith("40_").sum() == 0


def test_utkface_malformed(tmp_path):
    write_png(tmp_path / "1_0_0_20170109142408075.jpg", 0)
    write_png(tmp_path / "1_7_0_20170109142408076.jpg", 1)   # gender 7
    write_png(tmp_path / "selfie.jpg", 2)
    with pytest.raises(ManifestError) as e:
        load_dataset("utkface", tmp_path)
    assert "file '1_7_0_20170109142408076.jpg'" in str(e.value) and "file 'selfie.jpg'" in str(e.value)
    assert len(load_dataset("utkface", tmp_path, skip_malformed=True, split_fractions=[1, 0, 0])) == 1


# ------------------------------------------------------------------------------ SpuCo Animals
def make_spuco(root, n=2):
    seed = 0
    for top, classes, biases in (("spuco_birds", ("landbirds", "waterbirds"), ("land", "water")),
                                 ("spuco_dogs", ("small_dogs", "big_dogs"), ("indoor", "outdoor"))):
        for split in ("train", "val", "test"):
            for c in classes:
                for b in biases:
                    for i in range(n):
                        seed += 1
                        write_png(root / top / split / c / b / f"{seed}.png", seed)


def test_spuco_animals(tmp_path):
    make_spuco(tmp_path)
    m = load_dataset("spuco_animals", tmp_path)
    assert m.card.classes == ["landbird", "waterbird", "small_dog", "big_dog"] and m.card.n_groups == 8
    assert len(m) == 8 * 3 * 2
    row = m.frame[m.frame["path"].str.startswith("spuco_dogs/val/big_dogs/indoor/")].iloc[0]
    assert [row["label"], row["bias"], row["split"]] == ["big_dog", "land-indoor", "val"]
    assert m.card.majority_bias["big_dog"] == "water-outdoor" and m.card.majority_bias["small_dog"] == "land-indoor"
    assert all(v == 2 for v in m.select(split="test").group_counts().values())


def test_spuco_animals_missing_folder(tmp_path):
    make_spuco(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "spuco_dogs" / "test" / "big_dogs" / "outdoor")
    with pytest.raises(ManifestError, match="folder not found: .*spuco_dogs/test/big_dogs/outdoor"):
        load_dataset("spuco_animals", tmp_path)


# ------------------------------------------------------------------------------ helpers, CLI
def test_stratified_split_is_order_free_and_exact():
    rows = [{"path": f"{i:03d}.png", "label": "a", "bias": "x"} for i in range(10)]
    rev = [dict(r) for r in reversed(rows)]
    stratified_split(rows, (0.6, 0.2, 0.2), seed=1)
    stratified_split(rev, (0.6, 0.2, 0.2), seed=1)
    assert {r["path"]: r["split"] for r in rows} == {r["path"]: r["split"] for r in rev}
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [6, 2, 2]
    with pytest.raises(ValueError, match="split_fractions"):
        stratified_split(rows, (1, 1), 0)


def test_auto_majority_opposite_for_two_classes():
    rows = [{"label": "a", "bias": "x"}] * 5 + [{"label": "a", "bias": "y"}] + [{"label": "b", "bias": "x"}] * 3
    # class b's most frequent value is x, so class a gets y even though a is mostly x
    assert auto_majority(rows, ["a", "b"], ["x", "y"]) == {"a": "y", "b": "x"}


def test_data_import_cli(tmp_path, capsys):
    make_celeba(tmp_path / "celeba")
    out = tmp_path / "imported"
    assert main(["data", "import", "celeba", str(tmp_path / "celeba"), "--out", str(out),
                 "--option", "label=Blond_Hair"]) == 0
    m = Manifest.load(out)
    assert len(m) == 7 and m.card.classes == ["not_blond_hair", "blond_hair"]
    assert main(["data", "import", "celeba", str(tmp_path / "celeba"), "--out", str(out), "--option", "colour=1"]) == 2
    assert "adapter 'celeba'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ every adapter
def make_utkface(root, n=60):
    for i in range(n):
        write_png(root / f"{[1, 3, 25, 40][i % 4]}_{i % 2}_{i % 5}_2017011{i:09d}.jpg.chip.jpg", i)


def make_folder(root, n=3):
    seed = 0
    for split in ("train", "val", "test"):
        for c in ("cat", "dog"):
            for b in ("indoor", "outdoor"):
                for i in range(n):
                    seed += 1
                    write_png(root / split / c / b / f"{i}.png", seed)


def make_csv(root):
    make_folder(root / "images")
    from ffr.data.sources import load_dataset as load

    load("folder", root / "images").save(root)


ADAPTER_FIXTURES = {
    "csv": (make_csv, {}), "folder": (make_folder, {}), "celeba": (make_celeba, {}),
    "celeba_hq": (make_celeba_hq, {"partition_file": "list_eval_partition.txt"}),
    "spuco_animals": (make_spuco, {}), "utkface": (make_utkface, {}),
    "waterbirds": (lambda root: make_waterbirds(root, [(f"{c}/{c}_{i}_{p}.jpg", y, i % 3, p) for i in range(12)
                                                       for c, y in (("001.A", 1), ("094.B", 0)) for p in (0, 1)]), {}),
}


@pytest.mark.parametrize("adapter", __import__("ffr.data.adapters", fromlist=["ADAPTERS"]).ADAPTERS.names())
def test_every_adapter_reads_its_layout_and_prepares(adapter, tmp_path):
    """Each registered adapter on a fixture in its distribution's layout, through the one prepare
    that `ffr prepare`, DVC, the Kubeflow prepare step and `compare` share."""
    from ffr.data.sources import prepare

    assert adapter in ADAPTER_FIXTURES, f"adapter {adapter!r} has no fixture here: add one"
    make, options = ADAPTER_FIXTURES[adapter]
    make(tmp_path / "src")
    split = prepare(str(tmp_path / "src"), tmp_path / "prepared", 0.6, seed=0, min_val_per_group=1,
                    adapter=adapter, options=options)
    again = Manifest.load(tmp_path / "prepared")
    assert len(again) == len(split) > 0 and again.digest() == split.digest()
    assert set(again.frame["split"]) <= {"train", "val", "test"} and (again.frame["source"] == "real").all()
    assert (tmp_path / "prepared" / "split_report.json").is_file()
