"""Model registry and the promotion gate: a trained model becomes a version of a registered model
with alias ``challenger``; it takes the ``champion`` alias only when it is better on the same test
data.

The gate itself is pure and lives in :mod:`ffr.promotion` (:func:`~ffr.promotion.decide`); this
module is the MLflow side: versions, tags, aliases.

Every number the decision used — the challenger's, the champion's, the policy — and the lineage
(git commit, pipeline run id, data digests) are written as version tags. The aliases are the only
state consumers read, and each is moved by one request, after every tag is written: a registration
or promotion cut off half way leaves no alias pointing at a half-described version.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ffr.integrations.mlflow_server import TrackingError, client_for, guarded
from ffr.promotion import Decision, Evaluation, GatePolicy, decide

CHAMPION, CHALLENGER = "champion", "challenger"
STATUS_TAG = "ffr.status"  # "pending" until the version is fully described, then "registered"


def _version_tags(client, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def champion_version(client, name: str):
    """The version holding the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


@guarded("registering the model")
def register(tracking_uri: str, name: str, model_uri: str, evaluation: Evaluation,
             lineage: dict[str, str] | None = None, run_id: str | None = None) -> str:
    """Create a version of registered model ``name`` from ``model_uri`` carrying ``evaluation``
    and ``lineage`` as tags (one request), then point ``challenger`` at it. Returns the version.
    If anything after the version's creation fails, the version is deleted again (best effort)
    and it never holds an alias."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    try:
        client.create_registered_model(name, description="ffr image classifier; aliases: champion, challenger")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    from ffr.integrations.mlflow_server import provenance

    tags = {**evaluation.tags("test"), **{f"lineage.{k}": str(v) for k, v in (lineage or {}).items()},
            **provenance(), STATUS_TAG: "pending"}
    source, model_id = model_uri, None
    if model_uri.startswith("models:/m-"):  # an MLflow 3 logged model: the version points at it, as
        model_id = model_uri.removeprefix("models:/").split("/")[0]  # mlflow.register_model does
        logged = client.get_logged_model(model_id)
        source, run_id = f"models:/{model_id}", run_id or logged.source_run_id
    mv = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    try:
        if model_id:
            _link(client, model_id, name, str(mv.version), evaluation, run_id)
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        client.set_model_version_tag(name, mv.version, STATUS_TAG, "registered")
    except Exception:
        try:
            client.delete_model_version(name, mv.version)
        except Exception:  # the server is gone: the version stays "pending" and unaliased
            pass
        raise
    return str(mv.version)


def _link(client, model_id: str, name: str, version: str, evaluation: Evaluation, run_id: str | None) -> None:
    """What ``mlflow.register_model`` writes and ``create_model_version`` does not: the logged
    model's list of the versions made from it (its page shows "Registered"), and its test
    numbers, so the logged model carries the evaluation it was registered with."""
    import time

    from mlflow.entities import Metric
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    logged = client.get_logged_model(model_id)
    versions = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS) or "[]") + [{"name": name, "version": version}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
    source_run = run_id or logged.source_run_id
    if source_run:
        ts = int(time.time() * 1000)
        metrics = {"test/worst_group_acc": evaluation.worst_group_acc,
                   **{f"test/group/{g}/acc": a for g, a in evaluation.groups.items() if a is not None}}
        client.log_batch(source_run, metrics=[Metric(k, float(v), ts, 0, model_id=model_id) for k, v in metrics.items()])


DECISION_TAG = "ffr.decision."  # registered-model tags, one per decision: the history, never rewritten


def _record(decision: Decision | None, action: str, version: str, champion_version: str | None, policy: GatePolicy | None,
            challenger: Evaluation | None, champion: Evaluation | None, context: dict | None) -> dict:
    """One decision as the history keeps it."""
    import time

    def numbers(e: Evaluation | None) -> dict | None:
        return None if e is None else {"worst_group_acc": e.worst_group_acc, "groups": e.groups,
                                       "test_digest": e.test_digest}

    verdict = action if decision is None else (
        "promoted" if decision.promote else ("refused" if decision.refused else "rejected"))
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "verdict": verdict,
            "version": str(version), "champion_version": champion_version,
            "reasons": [] if decision is None else decision.reasons,
            "policy": None if policy is None else asdict(policy),
            "challenger": numbers(challenger), "champion": numbers(champion), **(context or {})}


def _append(client, name: str, version: str, record: dict) -> str:
    """Append ``record`` to the history: a new tag of the registered model and of ``version`` (a
    key that sorts by time, so no earlier decision is ever rewritten). Returns the key."""
    import time

    key = f"{DECISION_TAG}{int(time.time() * 1000):015d}-{version}"
    text = json.dumps(record, sort_keys=True)
    if len(text) > 4900:  # a tag holds 5000 characters: keep the decision, drop the per-group numbers
        text = json.dumps({**record, "challenger": {**(record.get("challenger") or {}), "groups": None},
                           "champion": {**(record.get("champion") or {}), "groups": None}}, sort_keys=True)
    client.set_registered_model_tag(name, key, text)
    client.set_model_version_tag(name, version, key, text)
    return key


@guarded("reading the decision history")
def history(tracking_uri: str, name: str) -> list[dict]:
    """Every gate decision and rollback of registered model ``name``, oldest first."""
    client = client_for(tracking_uri)
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(DECISION_TAG))]


def _champion_on(client, tracking_uri: str, name: str, current, test_data: str, device: str) -> Evaluation:
    """The current champion evaluated, by the one group evaluator, on the test split of
    ``test_data``: the challenger's test data, so the gate compares two models on one set."""
    import mlflow

    from ffr.steps import evaluate_model

    mlflow.set_tracking_uri(tracking_uri)
    runner = mlflow.pyfunc.load_model(f"models:/{name}/{current.version}").unwrap_python_model()
    metrics = evaluate_model(runner.model, runner.meta, test_data, "test", device=device,
                             what=f"{name} version {current.version}")
    return Evaluation.from_metrics(metrics)


@guarded("running the promotion gate")
def promote(tracking_uri: str, name: str, version: str, policy: GatePolicy | None = None,
            test_data: str | None = None, device: str = "auto", context: dict | None = None) -> Decision:
    """Run the gate for ``version`` against the current champion and move ``champion`` to it when
    the gate passes. With ``test_data`` (the dataset folder whose test split the challenger was
    evaluated on) the champion is first evaluated on that same split, so a new data revision does
    not freeze the champion: both models are compared on one test set. Without it the champion's
    stored numbers are used, and other test data is a refusal. The decision — both evaluations,
    the data they were made on, the policy, the verdict, the reasons and ``context`` (e.g. the
    pipeline run) — is appended to the history (:func:`history`) and written as the version's
    ``gate.*`` tags."""
    policy = policy or GatePolicy()
    client = client_for(tracking_uri)
    tags = _version_tags(client, name, version)
    if tags.get(STATUS_TAG) != "registered":
        raise TrackingError(f"model {name!r} version {version} is not fully registered "
                            f"({STATUS_TAG}={tags.get(STATUS_TAG)!r}); register it again")
    challenger = Evaluation.from_tags(tags, "test")
    current = champion_version(client, name)
    if current is not None and str(current.version) == str(version):
        return Decision(False, [f"version {version} already is the champion"])
    champion = None
    if current is not None:
        champion = Evaluation.from_tags(dict(current.tags), "test")
        if test_data is not None:
            from ffr.data.manifest import Manifest

            digest = Manifest.load(test_data, check_files=False).select(split="test", source="real").digest()
            if digest != challenger.test_digest:
                raise ValueError(f"{test_data}: its test split (digest {digest[:12]}) is not the one version "
                                 f"{version} was evaluated on ({challenger.test_digest[:12]})")
            champion = _champion_on(client, tracking_uri, name, current, test_data, device)
    decision = decide(challenger, champion, policy)
    record = _record(decision, "gate", version, None if current is None else str(current.version), policy,
                     challenger, champion, context)
    tags = {"gate.decision": record["verdict"], "gate.reasons": json.dumps(decision.reasons),
            "gate.policy": json.dumps(asdict(policy)), "gate.champion_version": record["champion_version"] or ""}
    if champion is not None:
        tags.update(champion.tags("gate.champion"))
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    _append(client, name, version, record)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if current is not None:
            client.set_model_version_tag(name, current.version, "gate.replaced_by", str(version))
    return decision


@guarded("rolling the champion back")
def rollback(tracking_uri: str, name: str, context: dict | None = None) -> tuple[str, str]:
    """Move ``champion`` back to the version it replaced last (the history's latest promotion of
    the current champion names it), recorded in the history as a rollback. Returns (the version
    that was champion, the champion now)."""
    client = client_for(tracking_uri)
    current = champion_version(client, name)
    if current is None:
        raise TrackingError(f"registered model {name!r} has no champion to roll back")
    now = str(current.version)
    made = [r for r in history(tracking_uri, name)
            if r.get("version") == now and r.get("action") == "gate" and r.get("verdict") == "promoted"]
    previous = made[-1].get("champion_version") if made else None
    if not previous:
        raise TrackingError(f"{name}@{CHAMPION} (version {now}) replaced no earlier champion: nothing to roll back to")
    record = {**_record(None, "rollback", previous, now, None, None, None, context), "verdict": "promoted",
              "replaced": now, "reasons": [f"rollback: version {now} replaced by the champion before it, {previous}"]}
    _append(client, name, previous, record)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, now, "gate.rolled_back_to", previous)
    return now, previous


def _run_tree(client, run_id: str) -> list:
    """``run_id`` and all its nested runs, parents first."""
    root = client.get_run(run_id)
    runs, i = [root], 0
    while i < len(runs):
        parent = runs[i]
        runs.extend(client.search_runs([parent.info.experiment_id],
                                       f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                       order_by=["attributes.start_time ASC"]))
        i += 1
    return runs


def _evaluation_from_run(run, digest: str, prefix: str = "test") -> Evaluation:
    m, head = run.data.metrics, f"{prefix}/group/"
    groups = {k[len(head):-len("/n")]: m.get(k[:-len("/n")] + "/acc")
              for k in m if k.startswith(head) and k.endswith("/n")}
    return Evaluation(float(m[f"{prefix}/worst_group_acc"]), groups, digest)


def _test_digest(run, runs: list) -> str | None:
    """The test rows' digest recorded on ``run`` or, failing that, on its nearest ancestor (a
    ``compare`` cell logs the test dataset once and its stages' evaluations under it)."""
    by_id = {r.info.run_id: r for r in runs}
    while run is not None:
        for k in ("data.test.eval_digest", "data.test.digest"):
            if k in run.data.tags:
                return run.data.tags[k]
        run = by_id.get(run.data.tags.get("mlflow.parentRunId"))
    return None


@guarded("reading the run")
def from_run(tracking_uri: str, run_id: str) -> tuple[str, Evaluation, dict[str, str], str]:
    """What to register from an MLflow run (a pipeline run, a ``compare`` cell, a stage):
    ``(model_uri, test evaluation, lineage, source run id)``. The model is the last one logged in
    the run or its nested runs; the evaluation, the test evaluation logged beside it (or the only
    one in the tree). Lineage: the git commit, the pipeline run id, every ``data.*`` tag."""
    client = client_for(tracking_uri)
    runs = _run_tree(client, run_id)
    with_model = [r for r in runs if "ffr.model_uri" in r.data.tags]
    if not with_model:
        raise TrackingError(f"run {run_id} and its nested runs logged no model")
    model_run = max(with_model, key=lambda r: r.info.start_time)
    evaluated = [r for r in runs if "test/worst_group_acc" in r.data.metrics]
    if model_run in evaluated:
        eval_run = model_run
    elif len(evaluated) == 1:
        eval_run = evaluated[0]
    else:
        raise TrackingError(f"run {run_id}: {len(evaluated)} test evaluations and none beside the model of run "
                            f"{model_run.info.run_id}; pass the run that holds both, or --evaluation")
    digest = _test_digest(eval_run, runs)
    if digest is None:
        raise TrackingError(f"run {eval_run.info.run_id}: its test evaluation does not name its test data "
                            "(no data.test.digest tag)")
    lineage = {"run_id": run_id, "model_run_id": model_run.info.run_id, "eval_run_id": eval_run.info.run_id}
    for r in runs:
        for k, v in r.data.tags.items():
            if k.startswith("data.") or k in ("ffr.git_commit", "ffr.pipeline_run_id", "mlflow.source.git.commit"):
                lineage.setdefault(k.removeprefix("ffr."), v)
    return model_run.data.tags["ffr.model_uri"], _evaluation_from_run(eval_run, digest), lineage, model_run.info.run_id


def register_and_gate(tracking_uri: str, name: str, model_uri: str, evaluation: Evaluation,
                      lineage: dict[str, str] | None = None, policy: GatePolicy | None = None,
                      run_id: str | None = None, test_data: str | None = None, device: str = "auto",
                      context: dict | None = None) -> tuple[str, Decision]:
    """:func:`register` the model as the challenger, then run the gate (:func:`promote`; with
    ``test_data``, on the champion re-evaluated there): what ``ffr promote`` and the pipelines'
    register step both call."""
    version = register(tracking_uri, name, model_uri, evaluation, lineage, run_id)
    return version, promote(tracking_uri, name, version, policy, test_data, device, context)


def verdict_markdown(name: str, result: dict, decision: str) -> str:
    """The gate's verdict as a parent run's description shows it: the decision (``promoted``,
    ``rejected``, ``refused``), the version (a link to it in the UI) and the reasons."""
    meaning = {"promoted": "now @champion", "rejected": "stays @challenger, the champion is unchanged",
               "refused": "not compared: the champion is unchanged"}.get(decision, "")
    version = result.get("version")
    lines = [f"**{decision}**: [{name} version {version}](#/models/{name}/versions/{version}) {meaning}",
             "", result.get("summary", "")]
    lines += [f"- {r}" for r in result.get("reasons") or []]
    return "\n".join(lines)


def register_pipeline_model(tracking_uri: str | None, name: str, checkpoint: str, metrics: dict, test_data: str,
                            lineage: dict[str, str], policy: GatePolicy, logged_model_uri: str = "",
                            experiment: str = "ffr", pipeline_run_id: str = "") -> dict:
    """A pipeline's register step: the model of ``checkpoint`` (logged already by its training
    step at ``logged_model_uri``, else logged here), with its test evaluation ``metrics`` on the
    real test rows of ``test_data``, registered as the challenger of ``name`` and put through the
    gate (:func:`register_and_gate`), in a ``register`` run nested under the pipeline's. Returns
    the decision as a record (``registered``, ``version``, ``promoted``, ``refused``, ``reasons``,
    ``summary``); without a tracking server (none given, no ``$MLFLOW_TRACKING_URI``) nothing is
    registered."""
    import os

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return {"registered": False, "summary": "no MLflow tracking server configured: not registered"}
    from mlflow.entities import RunTag

    from ffr.data.manifest import Manifest
    from ffr.integrations.mlflow_runs import inherited, mlflow_run, pipeline_run
    from ffr.integrations.mlflow_tracker import describe
    from ffr.train.loop import load_checkpoint

    parent = pipeline_run(uri, experiment, pipeline_run_id)
    what = inherited(uri, parent, "register") if parent else {}
    with mlflow_run(uri, experiment, run_name="register", parent_run_id=parent, system_metrics=False,
                    tags={**what, "ffr.strategy": "ffr", "ffr.stage": "register",
                          "ffr.pipeline_run_id": pipeline_run_id}) as t:
        t.log_dataset(Manifest.load(test_data).select(split=metrics.get("split", "test"), source="real"), "test",
                      test_data)
        t.log_evaluation(metrics, "test")
        logged = logged_model_uri
        if not logged:  # the training step tracked nowhere: log the model here
            net, meta = load_checkpoint(checkpoint)
            t.log_model(net, meta)
            logged = t.model_uri
        context = {"pipeline_run_id": pipeline_run_id, "register_run_id": t.run_id}
        version, d = register_and_gate(uri, name, logged, Evaluation.from_metrics(metrics), lineage, policy,
                                       None if logged_model_uri else t.run_id, test_data, context=context)
        result = {"registered": True, "model": name, "version": version, "promoted": d.promote,
                  "refused": d.refused, "reasons": d.reasons, "summary": f"version {version}: {d.summary}"}
        # the decision where a user looks: the register run and the pipeline's own run
        shown = {"gate.decision": "promoted" if d.promote else ("refused" if d.refused else "rejected"),
                 "gate.version": version, "gate.summary": result["summary"][:4000]}
        t.set_tags(shown)
        t.log_metrics({"gate/promoted": float(d.promote)})
        t.client.log_dict(t.run_id, {**result, "history": history(uri, name)}, "gate/decision.json")
        if parent:
            t.client.log_batch(parent, tags=[RunTag(k, str(v)) for k, v in shown.items()])
            describe(t.client, parent, "Promotion gate", verdict_markdown(name, result, shown["gate.decision"]))
    return result
