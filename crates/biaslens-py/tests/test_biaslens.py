"""The wheel against the `biaslens` binary: the same job gives the same bits.

Runs on the tiny llama fixture (seconds) and, when models/ holds it, on SmolLM2-135M's
definitional controls (the issue's done-when check, about 30 s).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import biaslens

ESTIMATE_KEYS = ("value", "ci_low", "ci_high", "n", "method")


def safetensors_content(path):
    """Header (tensor names, shapes, offsets; metadata) and data of a safetensors file. The
    file's own bytes are not compared: the metadata map is written in hash-map order, which
    varies between processes (the CLI's own runs differ in it)."""
    b = path.read_bytes()
    n = int.from_bytes(b[:8], "little")
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def check_measure(r, cli_json_path):
    """`r` is the result `cli_json_path` holds: the whole JSON, the metrics and the columns."""
    text = cli_json_path.read_text()
    assert r.to_json() == text
    cli = json.loads(text)
    assert r.to_dict() == cli
    m = cli["metrics"]
    flat = {k: v for k, v in m.items() if k not in ("n_prompts", "n_professions", "regression")}
    for k in ("a_s", "a_f", "b", "r2"):
        flat[k] = None if m["regression"] is None else m["regression"][k]
    assert set(r.metrics) == set(flat)
    for k, v in flat.items():
        got = r.metrics[k]
        if v is None:
            assert got is None, k
        else:
            assert {x: got[x] for x in ESTIMATE_KEYS} == {x: v[x] for x in ESTIMATE_KEYS}, k
    assert (r.n_prompts, r.n_professions) == (m["n_prompts"], m["n_professions"])
    cols = r.prompts
    for k in ("text", "profession", "name", "template_index"):
        assert cols[k] == [p[k] for p in cli["prompts"]], k
    for k in ("p_he", "p_she", "p_they", "definitional", "stereotypical"):
        assert cols[k].dtype == np.float64
        # Bit for bit: the arrays' bytes against the JSON's (round-tripping) floats.
        want = np.array([p[k] for p in cli["prompts"]], dtype=np.float64)
        assert cols[k].tobytes() == want.tobytes(), k


def test_error_is_the_cli_message(tiny, cli, tmp_path):
    assert issubclass(biaslens.BiaslensError, RuntimeError)
    m = biaslens.load(str(tiny))
    # A failure while running: the CLI's exit code 1 and its message.
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(biaslens.BiaslensError) as e:
        m.measure(templates=missing)
    p = cli(["measure", "--model", tiny, "--templates", missing], cwd=tmp_path, check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {e.value}"
    assert "missing.txt" in str(e.value)
    # A flag's value is checked by the CLI's parser (usage error, exit code 2), with its message;
    # --split is an enum, so a bad value never reaches the job.
    with pytest.raises(biaslens.BiaslensError) as e:
        m.measure(split="nope")
    p = cli(["measure", "--model", tiny, "--split", "nope"], cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == str(e.value)
    assert "parameter `split`" in str(e.value)
    with pytest.raises(biaslens.BiaslensError, match="--batch-size"):
        m.measure(batch_size=0)
    with pytest.raises(biaslens.BiaslensError, match="unexpected argument '--no-such-flag'"):
        m.measure(no_such_flag=1)
    with pytest.raises(biaslens.BiaslensError):
        biaslens.load(str(tmp_path / "missing"))


def test_measure_against_a_base_result_matches_cli(tiny, cli, tmp_path):
    m = biaslens.load(str(tiny))
    m.measure(split="controls", json=str(tmp_path / "base.json"))
    r = m.measure(split="controls", against=str(tmp_path / "base.json"),
                  json=str(tmp_path / "py.json"))
    cli(["measure", "--model", tiny, "--split", "controls", "--against", "base.json", "--json",
         "cli.json"], cwd=tmp_path)
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    a = r.against_base
    want = json.loads((tmp_path / "cli.json").read_text())["against_base"]
    for k in ("abs_gap_ratio", "pronoun_mass_ratio", "abs_gap_ratio_at_base_mass",
              "definitional_kept", "n_prompts", "n_professions"):
        assert a[k] == want[k], k
    for k in ("abs_gap_ratio", "pronoun_mass_ratio", "abs_gap_ratio_at_base_mass",
              "definitional_kept"):
        assert a[k]["value"] == a[k]["ci_low"] == a[k]["ci_high"] == 1.0
        assert a[k]["n"] == a["n_professions"]
    assert m.measure(split="controls").against_base is None
    with pytest.raises(biaslens.BiaslensError, match="same flags"):
        m.measure(split="edit", against=str(tmp_path / "base.json"))


def test_measure_matches_cli_on_tiny(tiny, cli, tmp_path):
    m = biaslens.load(str(tiny))
    r = m.measure(split="edit", template_split="unseen", seed=3)
    cli(
        ["measure", "--model", tiny, "--split", "edit", "--template-split", "unseen",
         "--seed", "3", "--json", "cli.json"],
        cwd=tmp_path,
    )
    check_measure(r, tmp_path / "cli.json")
    # `json=` writes the same file as the CLI's --json.
    m.measure(split="edit", template_split="unseen", seed=3, json=str(tmp_path / "py.json"))
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()


def test_measure_controls_matches_cli_on_smollm2(smollm2, cli, tmp_path):
    """The issue's done-when: a_f of the controls from Python is the CLI's."""
    r = biaslens.load(smollm2).measure(split="controls")
    # In this process's directory: a registry model's recorded path depends on it (models/
    # there, else the crate's).
    cli(["measure", "--model", smollm2, "--split", "controls", "--json", tmp_path / "cli.json"],
        cwd=os.getcwd())
    check_measure(r, tmp_path / "cli.json")
    cli_af = json.loads((tmp_path / "cli.json").read_text())["metrics"]["regression"]["a_f"]
    assert r.metrics["a_f"]["value"] == cli_af["value"]


def test_trace_matches_cli_summary(tiny, cli, tmp_path):
    m = biaslens.load(str(tiny))
    t = m.trace(prompts=2, samples=2, kinds=("hidden", "mlp", "attn"), seed=7, window=2)
    cli(
        ["trace", "--model", tiny, "--prompts", "2", "--samples", "2",
         "--kinds", "hidden,mlp,attn", "--seed", "7", "--window", "2", "--out", "run"],
        cwd=tmp_path,
    )
    text = (tmp_path / "run/summary.json").read_text()
    assert t.to_json() == text
    summary = json.loads(text)
    assert t.n_prompts == summary["n_prompts"] == 2
    assert t.te["value"] == summary["te"]["value"]
    assert t.kinds == ["hidden", "mlp", "attn"]
    assert len(t.roles) == 6 and t.roles[-1] == "last token"
    layers = len(summary["roles"][0]["ie"])
    assert t.effects.shape == t.ci_low.shape == t.ci_high.shape == (3, 6, layers)
    assert t.effects.dtype == np.float64
    role_keys = ["first_subject", "middle_subject", "last_subject", "first_subsequent",
                 "further", "last"]
    seen = np.zeros(t.effects.shape, dtype=bool)
    for row in summary["roles"]:
        k, r = t.kinds.index(row["kind"]), role_keys.index(row["role"])
        for l, e in enumerate(row["ie"]):
            assert t.effects[k, r, l] == e["value"]
            assert t.ci_low[k, r, l] == e["ci_low"]
            assert t.ci_high[k, r, l] == e["ci_high"]
            seen[k, r, l] = True
    assert np.isnan(t.effects[~seen]).all()


def test_edit_matches_cli(tiny, cli, tmp_path):
    """The same flags give the same delta (its sha256) and the same record."""
    m = biaslens.load(str(tiny))
    out, record = m.edit(str(tmp_path / "py"), method="ft", layers=[0], max_edit=2)
    assert str(out) == str(tmp_path / "py")
    cli(
        ["edit", "--model", tiny, "--method", "ft", "--layers", "0", "--max-edit", "2",
         "--out", "cli"],
        cwd=tmp_path,
    )
    py_head, py_data = safetensors_content(tmp_path / "py/delta.safetensors")
    cli_head, cli_data = safetensors_content(tmp_path / "cli/delta.safetensors")
    assert py_head == cli_head and py_data == cli_data
    # The delta's own checksum (of its values), the hash `biaslens apply` verifies.
    assert py_head["__metadata__"]["biaslens.sha256"] == cli_head["__metadata__"]["biaslens.sha256"]
    assert safetensors_content(tmp_path / "py/model.safetensors") == safetensors_content(
        tmp_path / "cli/model.safetensors"
    )
    want = json.loads((tmp_path / "cli/edit.json").read_text())
    for r in (record, want):
        r.pop("wall_times_s")
    assert record == want
    assert record["method"] == "ft-l" and record["layers"] == [0]
    # --out is checked as the CLI checks it: an existing directory needs force=True.
    with pytest.raises(biaslens.BiaslensError, match="--force"):
        m.edit(str(tmp_path / "py"), method="ft", layers=[0], max_edit=2)
    # The edited model loads and measures.
    assert biaslens.load(str(out)).measure(split="controls").n_prompts > 0


def test_eval_matches_cli(tiny, cli, tmp_path):
    res = biaslens.eval(biaslens.load(str(tiny)), tasks=["copa"], limit=5, no_cache=True)
    cli(
        ["eval", "--model", tiny, "--tasks", "copa", "--limit", "5", "--no-cache", "--out", "ev"],
        cwd=tmp_path,
    )
    want = json.loads((tmp_path / "ev/results.json").read_text())

    def strip(x):
        """Without wall times."""
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "seconds"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    assert strip(res) == strip(want)
    assert [t["task"] for t in res["tasks"]] == ["copa"]
    # A --model string works too; out= keeps the folder.
    res2 = biaslens.eval(str(tiny), tasks=["copa"], limit=5, no_cache=True, out=str(tmp_path / "o"))
    assert strip(res2) == strip(want)
    assert (tmp_path / "o/results.json").is_file()


def test_python_m_runs_the_cli(tiny, cli, tmp_path):
    args = ["measure", "--model", str(tiny), "--split", "controls", "--json"]
    p = subprocess.run(
        [sys.executable, "-m", "biaslens", *args, "py.json"], cwd=tmp_path,
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    c = cli([*args, "cli.json"], cwd=tmp_path)
    assert p.stdout == c.stdout
    assert (tmp_path / "py.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    # Usage errors and failures keep the binary's exit codes and messages.
    for bad, code in (
        (("--batch-size", "0"), 2),
        (("--split", "x"), 2),
        (("--templates", str(tmp_path / "missing.txt")), 1),
    ):
        bad = ["measure", "--model", str(tiny), *bad]
        p = subprocess.run([sys.executable, "-m", "biaslens", *bad], cwd=tmp_path,
                           capture_output=True, text=True)
        c = cli(bad, cwd=tmp_path, check=False)
        assert p.returncode == c.returncode == code
        assert p.stderr == c.stderr
    p = subprocess.run([sys.executable, "-m", "biaslens", "--version"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.startswith("biaslens ")


class CtrlCAt:
    """A progress display that records what it is shown and sends this process SIGINT, as
    Ctrl-C does, when the first step of `what` arrives with work still to do. Deterministic:
    no timer decides whether the work had finished."""

    def __init__(self, what):
        self.what, self.steps, self.lines, self.sent = what, [], [], False

    def line(self, text):
        self.lines.append(text)

    def step(self, what, done, total):
        self.steps.append((what, done, total))
        if not self.sent and what.startswith(self.what) and 0 < done < total:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_measure_and_the_model_still_works(tiny, cli, tmp_path):
    m = biaslens.load(str(tiny))
    ctrl_c = CtrlCAt("measure")
    with pytest.raises(KeyboardInterrupt):
        m.measure(split="controls", batch_size=1, progress=ctrl_c)
    assert ctrl_c.sent
    done, total = max(d for _, d, _ in ctrl_c.steps), ctrl_c.steps[0][2]
    assert done < total, "the interrupted measure ran to the end"
    # The stop is withdrawn: the same model measures again, as the CLI does.
    shown = CtrlCAt("nothing")
    r = m.measure(split="controls", batch_size=1, progress=shown)
    assert shown.steps[-1][1] == shown.steps[-1][2] == r.n_prompts
    cli(["measure", "--model", tiny, "--split", "controls", "--batch-size", "1",
         "--json", "cli.json"], cwd=tmp_path)
    check_measure(r, tmp_path / "cli.json")


def test_ctrl_c_during_eval_keeps_the_scored_requests(smollm2, tmp_path):
    """An interrupted eval leaves its cache; the rerun reads it and gives the results of an
    uninterrupted run. On SmolLM2: the tiny model scores all of it before Ctrl-C can land, and
    its word-level tokenizer makes some requests identical."""
    m = biaslens.load(smollm2)
    args = dict(tasks=["copa"], limit=20, batch_tokens=64, cache=str(tmp_path / "cache"))
    ctrl_c = CtrlCAt("eval")
    with pytest.raises(KeyboardInterrupt):
        biaslens.eval(m, progress=ctrl_c, **args)
    assert ctrl_c.sent
    cached = list((tmp_path / "cache").rglob("copa.jsonl"))
    assert len(cached) == 1
    kept = len(cached[0].read_text().splitlines())
    assert 0 < kept < 40, kept  # 20 items x 2 choices
    resumed = biaslens.eval(m, progress=False, **args)
    fresh = biaslens.eval(m, progress=False, tasks=["copa"], limit=20, batch_tokens=64,
                          no_cache=True)
    assert resumed["tasks"][0]["cache"]["from_cache"] == kept
    assert resumed["tasks"][0]["metrics"] == fresh["tasks"][0]["metrics"]


def test_progress_reaches_the_end_of_each_stage(tiny):
    m = biaslens.load(str(tiny))
    shown = CtrlCAt("nothing")
    t = m.trace(prompts=2, samples=2, kinds=("mlp",), window=2, progress=shown)
    assert shown.steps[-1] == ("trace: prompts", t.n_prompts, t.n_prompts)
    shown = CtrlCAt("nothing")
    biaslens.eval(m, tasks=["copa"], limit=5, no_cache=True, progress=shown)
    assert shown.steps and shown.steps[-1][1] == shown.steps[-1][2]
