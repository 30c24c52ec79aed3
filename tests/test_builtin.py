"""The built-in benchmarks as a user reaches them: ``ffr data demo --name``, ``data.demo.name`` in a
config, the ``procedural`` backend choosing each benchmark's own generator, and the default
training budget on a 600-image dataset."""

from __future__ import annotations

import json

import pytest

from ffr.checks import check_experiment
from ffr.cli import main
from ffr.config import ConfigError, load_config
from ffr.data.builtin import BUILTIN_DATASETS, option_problems, split_options
from ffr.data.faces import FacesSpec
from ffr.data.galaxies import GalaxiesSpec
from ffr.synthesis.faces import FacesBackend
from ffr.synthesis.galaxies import GalaxiesBackend
from ffr.synthesis.generation import create_backend
from ffr.synthesis.procedural import ProceduralBackend
from ffr.data.demo import DemoSpec


def test_the_three_benchmarks_and_their_options():
    assert BUILTIN_DATASETS.names() == ["digits", "faces", "galaxies"]
    bench, options = split_options({"name": "faces", "variants": 2})
    assert bench.name == "faces" and options == {"variants": 2}
    assert split_options(None)[0].name == "digits"
    assert option_problems({"name": "faces", "variants": 2}) == []
    assert "unknown option(s) ['per_digit']" in option_problems({"name": "faces", "per_digit": 3})[0]
    assert "unknown built-in benchmark 'mnist'" in option_problems({"name": "mnist"})[0]
    with pytest.raises(ConfigError, match=r"data.demo: .*unknown built-in benchmark 'mnist'; known: digits, faces, galaxies"):
        check_experiment(load_config(None, ["data.demo={name: mnist}"]))


@pytest.mark.parametrize("card, generator", [(DemoSpec().card(), ProceduralBackend),
                                             (FacesSpec().card(), FacesBackend),
                                             (GalaxiesSpec().card(), GalaxiesBackend)])
def test_procedural_picks_each_benchmarks_own_generator(card, generator):
    backend = create_backend("procedural", card, image_size=16)
    assert type(backend) is generator
    group = card.groups[-1]
    from ffr.synthesis.generation import make_request

    assert backend.generate([make_request(backend, 0, *group, 0)])[0].size == (16, 16)


def test_data_demo_builds_the_named_benchmark(tmp_path, capsys):
    assert main(["data", "demo", "--name", "faces", "--out", str(tmp_path / "faces")]) == 0
    out = capsys.readouterr().out
    assert "faces benchmark: 2000 real images" in out
    card = json.loads((tmp_path / "faces" / "card.json").read_text())
    assert card["name"] == "faces" and card["bias_values"] == ["warm", "cool"]


def test_an_unknown_benchmark_name_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "demo", "--name", "mnist", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_default_budget_trains_a_600_image_dataset(tmp_path):
    """The faces benchmark at bias rate 0.95 leaves 630 real training images (5 batches of 128 an
    epoch): with every training setting at its default (small_cnn, 40 epochs, the step floor) the
    model must learn the task, at least on the majority groups."""
    from ffr.experiment import compare

    cfg = load_config(None, ["data.demo={name: faces}", "strategies=[none]", "bias_rates=[0.95]", "seeds=[0]",
                             "device=cpu"])
    [record] = compare(cfg, tmp_path / "run", progress=False)
    split = json.loads(next((tmp_path / "run" / "cells").glob("*/split_report.json")).read_text())
    assert sum(split["after"]["train"].values()) == 630
    majority = [f"{c}_{b}" for c, b in (("face", "warm"), ("nonface", "cool"))]
    assert all(record["test"]["groups"][g]["acc"] >= 0.9 for g in majority), record["test"]["groups"]
    history = [json.loads(line) for line in next((tmp_path / "run" / "cells").glob("*/history.jsonl")).open()]
    assert history[-1]["total_steps"] >= 1000  # the floor raised 40 epochs (200 steps) to 200


def test_one_folder_never_mixes_two_benchmarks(tmp_path):
    """The benchmarks share file names: switching ``data.demo.name`` over one folder rebuilds it
    as the new benchmark, with none of the old one's images or markers left."""
    from ffr.data.builtin import make_builtin

    folder = tmp_path / "data"
    for demo in ({"name": "faces", "variants": 1}, {"per_digit": 3}, {"name": "faces", "variants": 1}):
        m = make_builtin(folder, demo)
        name = demo.get("name", "digits")
        assert m.card.name == ("demo" if name == "digits" else name)
        assert json.loads((folder / "card.json").read_text())["name"] == m.card.name
        assert len(list((folder / "images").rglob("*.png"))) == len(m)
        markers = sorted(p.name for p in folder.glob("*_spec.json"))
        assert markers == [BUILTIN_DATASETS.get(name).spec_file]


def test_each_benchmark_names_its_own_spec_file():
    import importlib

    for _, bench in BUILTIN_DATASETS.items():
        assert importlib.import_module(bench.module).SPEC_FILE == bench.spec_file


def test_a_users_card_that_only_shares_a_name_gets_the_digits():
    from ffr.data.manifest import DatasetCard

    card = DatasetCard(name="faces", classes=["cat", "dog"], bias_values=["indoor", "outdoor"])
    assert type(create_backend("procedural", card)) is ProceduralBackend


def test_the_dry_run_refuses_what_the_run_would(tmp_path, capsys):
    code = main(["sweep", "--dry-run", "--out", str(tmp_path / "s"), "--set", "equal_search=true",
                 "--set", "search={none: {train.lr: [1.0e-3, 1.0e-4]}}"])
    assert code == 2 and "equal_search" in capsys.readouterr().err


def test_prepare_takes_the_run_forms_benchmark_fields(tmp_path):
    """DVC's prepare stage passes params.yaml's demo_name and per_digit as ``--demo-name`` and
    ``--demo-per-digit``: the same fields, with the same rules, as the Kubeflow run form."""
    from ffr.data.manifest import Manifest

    assert main(["prepare", "--demo-name", "faces", "--demo-per-digit", "0", "--bias-rate", "0.95",
                 "--source", str(tmp_path / "src"), "--out", str(tmp_path / "prep")]) == 0
    m = Manifest.load(tmp_path / "prep")
    assert m.card.name == "faces" and len(m.select(split="train")) == 630
    assert main(["prepare", "--demo-per-digit", "5", "--bias-rate", "0.9", "--source", str(tmp_path / "src"),
                 "--out", str(tmp_path / "prep2")]) == 0  # the name defaults to digits: 5 a digit, 10 digits
    assert Manifest.load(tmp_path / "prep2").card.name == "demo" and (tmp_path / "src" / "demo_spec.json").is_file()
