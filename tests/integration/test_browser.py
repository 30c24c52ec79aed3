"""What a user sees in MLflow's UI, in a real browser (tests/integration/browser.py): a tiny
`ffr run comparison` (the KFP local runner, its run folder's own store) served by `mlflow server`,
then the pages a user opens — the runs table grouped by strategy, the pipeline's run with its
comparison and the gate's verdict in its description, the registered version linking to its
logged model and run. Assertions are on the rendered pages; screenshots are kept
(``$FFR_TEST_ARTIFACTS``, default ``test-artifacts/``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.browser import artifacts_dir, chrome, page_text, wait_for
from tests.integration.servers import Server, binary, free_port

pytestmark = pytest.mark.slow

PARAMS = ["data_demo_per_digit=10", "data_bias_rate=0.9", "synthesis_shards=1", "train_baseline_epochs=1", "train_pretrain_epochs=1",
          "train_finetune_epochs=1", "train_min_steps=0", "train_device=cpu"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(server URL, MlflowClient, experiment id, parent run) over a fresh comparison run folder."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("browser")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-m", "ffr.cli", "run", "comparison", "--quiet", "--runs-dir",
                          str(root / "runs"), *[a for p in PARAMS for a in ("--param", p)]],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (root / "runs").iterdir()
    store = f"sqlite:///{run_dir / 'mlflow.db'}"
    port = free_port()
    server = Server([binary("mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port",
                     str(port), "--workers", "1"], port, "/health", log=root / "mlflow.log", timeout=120)
    client = MlflowClient(store, registry_uri=store)
    exp = client.get_experiment_by_name("ffr")
    (parent,) = [r for r in client.search_runs([exp.experiment_id], "") if "mlflow.parentRunId" not in r.data.tags]
    try:
        yield server.url, client, exp.experiment_id, parent
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def _buttons(driver, text: str):
    from selenium.webdriver.common.by import By

    return [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]


def _menu_item(driver, text: str):
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "[role=menuitem], [role=menuitemcheckbox], [role=option]")
    return next((e for e in items if e.text.strip() == text), None)


def test_runs_table_groups_by_strategy(browser, ui):  # the browser first: no Chromium, no pipeline run
    url, client, experiment_id, parent = ui
    browser.get(f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    wait_for(lambda: parent.info.run_name in page_text(browser), "the pipeline's run in the runs table",
             driver=browser, shot="runs-table")
    text = page_text(browser)
    assert "ffr comparison pipeline" in text  # the Source column names the pipeline, not executor_main.py
    assert "Model training" in text and "Runs of ffr" in text  # the experiment's description is shown
    wait_for(lambda: _buttons(browser, "Group by"), "the Group by button", driver=browser, shot="runs-table")[0].click()
    wait_for(lambda: _menu_item(browser, "ffr.strategy"), "ffr.strategy among the Group by choices",
             driver=browser, shot="group-by-menu").click()
    browser.find_element("tag name", "body").send_keys("\ue00c")  # Escape closes the menu
    for strategy in ("ffr", "none", "usb", "asb"):
        wait_for(lambda: f"Group: {strategy}" in page_text(browser), f"a group of the {strategy} runs",
                 driver=browser, shot="runs-grouped")
    wait_for(lambda: all(n in page_text(browser) for n in ("evaluate ffr", "pretrain", "finetune")),
             "the nested runs in their groups", driver=browser, shot="runs-grouped")
    browser.save_screenshot(str(artifacts_dir() / "mlflow-runs-grouped-by-strategy.png"))


def test_pipeline_run_shows_the_comparison_and_the_verdict(browser, ui):
    url, client, experiment_id, parent = ui
    browser.get(f"{url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning")
    wait_for(lambda: "Comparison" in page_text(browser), "the comparison in the run's description",
             driver=browser, shot="pipeline-run")
    more = _buttons(browser, "Show more")
    if more:
        more[0].click()
    decision = parent.data.tags["gate.decision"]
    wait_for(lambda: "Promotion gate" in page_text(browser), "the gate's verdict in the run's description",
             driver=browser, shot="pipeline-run")
    def shown():
        text = page_text(browser)
        verdict = text.split("Promotion gate", 1)[-1]
        return ("worst-group acc" in text and all(s in text for s in ("none", "usb", "asb", "ffr"))
                and decision in verdict and "version 1" in verdict
                and "ffr comparison pipeline" in text)  # its Source
    wait_for(shown, "the comparison table, the verdict with its version and the Source", driver=browser,
             shot="pipeline-run")
    browser.save_screenshot(str(artifacts_dir() / "mlflow-pipeline-run.png"))


def test_registered_version_links_to_its_logged_model_and_run(browser, ui):
    from selenium.webdriver.common.by import By

    url, client, experiment_id, parent = ui
    version = client.get_model_version("ffr", "1")
    model_id = version.source.split("/")[-1]  # models:/m-<id>: the logged model the version was made from
    browser.get(f"{url}/#/models/ffr/versions/1")
    wait_for(lambda: "Source Run" in page_text(browser), "the version's source run", driver=browser,
             shot="model-version")
    def linked():
        links = {a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")}
        both = (any(h.endswith(f"/runs/{version.run_id}") for h in links)
                and any(h.endswith(f"/models/{model_id}") for h in links))
        return links if both else None
    links = wait_for(linked, "links to the version's source run and logged model", driver=browser,
                     shot="model-version")
    wait_for(lambda: "gate.decision" in page_text(browser) and "lineage.data.test.dvc_md5" in page_text(browser),
             "the version's gate and lineage tags", driver=browser, shot="model-version")
    browser.save_screenshot(str(artifacts_dir() / "mlflow-model-version.png"))
    browser.get(next(h for h in links if h.endswith(f"/models/{model_id}")))
    wait_for(lambda: model_id in browser.current_url and "val/worst_group_acc" in page_text(browser),
             "the logged model's page with the selected checkpoint's validation metrics", driver=browser,
             shot="logged-model")
    wait_for(lambda: "ffr comparison pipeline: finetune" in page_text(browser),  # logged from: not executor_main.py
             "where the model was logged from", driver=browser, shot="logged-model")
    browser.save_screenshot(str(artifacts_dir() / "mlflow-logged-model.png"))


# The drawn marks (Vega's SVG) of the plot whose element id names ``key``: each mark's drawn width.
_MARKS = """
const div = [...document.querySelectorAll('div[id]')].find(d => d.id.includes(arguments[0]));
if (!div) return [];
return [...div.querySelectorAll('g.mark-' + arguments[1] + ' path')].map(p => p.getBBox().width);
"""


def test_dvc_plots_draw_with_no_network(tmp_path, browser):
    """`dvc plots show` over the project's dvc.yaml (ffr dvc-pipeline's) and plot files as ffr
    writes them: the page loads no script from elsewhere, and in a browser that reaches nothing but
    this machine the per-group bars and the validation curve are drawn."""
    from ffr.cli.common import write_csv
    from ffr.dvc_pipeline import write_dvc_pipeline

    dvc = binary("dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    written = {p.name for p in write_dvc_pipeline(tmp_path, "ffr", code=None)}
    assert "dvc_plots.html" in written
    write_csv(tmp_path / "plots" / "test_groups.csv",
              [{"group": g, "acc": a, "n": 50} for g, a in (("high_brick", 0.9), ("high_grass", 0.35),
                                                            ("low_brick", 0.6), ("low_grass", 0.8))])
    write_csv(tmp_path / "plots" / "finetune_history.csv",
              [{"epoch": e, "val/worst_group_acc": 0.1 * e, "train/loss": 1.0 / (e + 1)} for e in range(6)])
    subprocess.run([dvc, "plots", "show", "-o", "page"], cwd=tmp_path, env=env, check=True, capture_output=True)
    page = tmp_path / "page" / "index.html"
    assert "<script src" not in page.read_text().replace("'", '"')
    browser.get(page.as_uri())
    bars = wait_for(lambda: browser.execute_script(_MARKS, "test_groups", "rect"), "the per-group bars drawn",
                    driver=browser, shot="dvc-plots")
    curve = wait_for(lambda: browser.execute_script(_MARKS, "finetune_history", "line"), "the WGA curve drawn",
                     driver=browser, shot="dvc-plots")
    assert len(bars) == 4 and all(w > 20 for w in bars), bars  # a bar per group, as long as its accuracy
    assert bars[1] < bars[2] < bars[3] < bars[0], bars        # 0.35 < 0.6 < 0.8 < 0.9
    assert curve and max(curve) > 100, curve
    browser.save_screenshot(str(artifacts_dir() / "dvc-plots-offline.png"))
