"""Row e of harness/vs_pytorch.py: `biaslens eval` against lm-evaluation-harness on this machine.

Both sides score the same vendored files (fixtures/data) with the same task definitions as the
stored reference (fixtures/reference/smollm2-135m/lm_eval_capability.json, lm-eval 0.4.13 with
the model object passed in, `HFLM`, batch 16): multiple choice on `query` / `choices` / `gold`
(acc, acc_norm), WinoGrande by partial scoring, LAMBADA as a log-likelihood task (acc,
perplexity). The task configs below restate those definitions as lm-eval dictionaries.

Times are whole jobs with the model load counted on both sides: biaslens's whole `eval` command
(`--no-cache`), and transformers' model load plus lm-eval's `simple_evaluate`; and the scoring
alone: the tasks' `seconds` in biaslens's results.json against `simple_evaluate` alone. lm-eval runs with
`bootstrap_iters=0` (no bootstrap of the perplexity's standard error; it would only add to its
time). The deviation is the largest metric difference in points (perplexity: relative, in %).
"""
import json
import os
import shutil
import time

# biaslens task -> (lm-eval kind, data file under the data dir)
TASKS = {
    "arc_easy": ("mc", "arc/arc_easy.jsonl"),
    "arc_challenge": ("mc", "arc/arc_challenge.jsonl"),
    "piqa": ("mc", "piqa/piqa.jsonl"),
    "boolq": ("mc", "boolq/boolq.jsonl"),
    "copa": ("mc", "copa/copa.jsonl"),
    "openbookqa": ("mc", "openbookqa/openbook_qa.jsonl"),
    "winogrande": ("partial", "winogrande/winogrande.jsonl"),
    "lambada_openai": ("loglikelihood", "lambada_openai/lambada_openai.jsonl"),
    # One biaslens task over both files; lm-eval scores them as two tasks (the reference's
    # bl_winogender_female and bl_winogender_male), compared through their item-weighted mean.
    "winogender": ("mc", "winogender/llm_foundry_mc/winogender_mc_{}.jsonl"),
}
WINOGENDER_PARTS = ("female", "male")
# The two tasks that take three quarters of the full list's time (docs/performance.md).
DEFAULT_TASKS = "boolq,lambada_openai"


def _winogrande_text(doc):
    return int(doc["gold"])


def _winogrande_target(doc):
    return doc["continuation"]


def _winogrande_choice(doc):
    return doc["context_options"]


def task_configs(name, data_dir):
    """lm-eval's task dictionaries for one biaslens task (two for Winogender)."""
    if name not in TASKS:
        raise SystemExit(f"lm-eval row: unknown task {name!r} (known: {', '.join(TASKS)})")
    if name == "winogender":
        return [task_config(f"winogender_{part}", TASKS[name][0], TASKS[name][1].format(part),
                            data_dir) for part in WINOGENDER_PARTS]
    return [task_config(name, *TASKS[name], data_dir)]


def task_config(name, kind, rel, data_dir):
    """lm-eval's task dictionary for one data file."""
    cfg = {
        "task": f"bl_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": os.path.abspath(os.path.join(data_dir, rel))}},
        "test_split": "test",
        "num_fewshot": 0,
    }
    acc = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
    acc_norm = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
    if kind == "mc":
        cfg.update(output_type="multiple_choice", doc_to_text="{{query}}",
                   doc_to_choice="{{choices}}", doc_to_target="gold", target_delimiter=" ",
                   metric_list=[acc, acc_norm])
    elif kind == "partial":
        cfg.update(output_type="multiple_choice", doc_to_text=_winogrande_text,
                   doc_to_choice=_winogrande_choice, doc_to_target=_winogrande_target,
                   target_delimiter=" ", metric_list=[acc])
    else:
        ppl = {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}
        cfg.update(output_type="loglikelihood", doc_to_text="{{context}}",
                   doc_to_target=" {{continuation}}", target_delimiter="", metric_list=[ppl, acc])
    return cfg


def merged_winogender(theirs, sizes):
    """lm-eval's two Winogender tasks under biaslens's metric names: `acc` and `acc_norm` as
    item-weighted means of the two files, `acc_female`, `acc_norm_male`, ... per file. Returns
    (metrics, items), or (None, 0) when a file is missing."""
    parts = {p: f"bl_winogender_{p}" for p in WINOGENDER_PARTS}
    if not all(t in theirs and t in sizes for t in parts.values()):
        return None, 0
    n = sum(sizes[t] for t in parts.values())
    merged = {}
    for metric in ("acc", "acc_norm"):
        key = f"{metric},none"
        merged[key] = sum(theirs[t][key] * sizes[t] for t in parts.values()) / n
        for p, t in parts.items():
            merged[f"{metric}_{p},none"] = theirs[t][key]
    return merged, n


def deviation(ours, theirs, sizes, tasks):
    """(largest accuracy difference in points, largest relative perplexity difference in %,
    number of metrics compared).
    Winogender is compared only where both sides scored the same items (every item)."""
    by_task = {t["task"]: {m["name"]: (m["value"], m["n"]) for m in t["metrics"]}
               for t in ours["tasks"]}
    worst_pts, worst_ppl, compared = 0.0, 0.0, 0
    for name in tasks:
        mine = by_task.get(name)
        if name == "winogender":
            other, n = merged_winogender(theirs, sizes)
            if mine is not None and other is not None and mine.get("acc", (0, 0))[1] != n:
                continue  # a limit cut the two sides' item lists differently
        else:
            other = theirs.get(f"bl_{name}")
        if mine is None or other is None:
            raise SystemExit(f"lm-eval row: task {name} missing from one side's results")
        for metric, (value, _) in mine.items():
            key = f"{metric},none"
            if key not in other:
                continue
            compared += 1
            if metric == "perplexity":
                worst_ppl = max(worst_ppl, abs(value / other[key] - 1) * 100)
            else:
                worst_pts = max(worst_pts, abs(value - other[key]) * 100)
    return worst_pts, worst_ppl, compared


def row_lm_eval(ts, env, run, bin_, model, work, tasks, limit, data_dir, batch=16, products="f32"):
    """Time both sides on `tasks` (first `limit` items each); return the times and deviations.
    `products`: biaslens's `eval --products` (f32, or bf16x3 in an mkl build)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = [t for t in tasks.split(",") if t]
    configs = [c for t in tasks for c in task_configs(t, data_dir)]
    out = os.path.join(work, "lm-eval-row")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [bin_, "eval", "--model", model, "--tasks", ",".join(tasks), "--no-cache", "--out", out]
    if limit:
        cmd += ["--limit", str(limit)]
    if products != "f32":
        cmd += ["--products", products]
    _, t_b = run(cmd, env)
    ours = json.load(open(os.path.join(out, "results.json")))
    items = sum(m["n"] for t in ours["tasks"] for m in t["metrics"][:1])
    scoring_b = sum(t["seconds"] for t in ours["tasks"])

    t0 = time.perf_counter()
    lm = HFLM(pretrained=ts.model, tokenizer=ts.tok, batch_size=batch)
    res = simple_evaluate(model=lm, tasks=configs, limit=limit or None, bootstrap_iters=0,
                          log_samples=False)
    scoring_p = time.perf_counter() - t0
    t_p = scoring_p + ts.load_s
    sizes = {k: v["effective"] for k, v in res.get("n-samples", {}).items()}
    pts, ppl, compared = deviation(ours, res["results"], sizes, tasks)
    return {"compared": compared, "tasks": tasks, "items": items, "biaslens_s": t_b, "lm_eval_s": t_p,
            "biaslens_scoring_s": scoring_b, "lm_eval_scoring_s": scoring_p,
            "dev_points": pts, "dev_ppl_pct": ppl}
