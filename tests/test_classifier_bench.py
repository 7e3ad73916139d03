"""The classifier bench's bookkeeping: held-out splits, overrides and loop seeds reach the runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import classifier_methods  # noqa: E402


def test_bench_runs_the_held_out_splits_with_the_overrides():
    overrides = ("sfron.temperature=0.25", "train.steps=30")
    item = ("random", 2, (5, 6), (), False, 1, ("sfron",), (1000, 1), overrides)
    result = classifier_methods.run_task(item)
    assert result["variants"] == [5, 6]
    assert result["recipe"]["sfron"]["temperature"] == 0.25 and result["recipe"]["train"]["steps"] == 30
    (row,) = result["rows"]
    assert row["method"] == "sfron" and len(row["runs"]) == 2
    # Two splits, two forget sets of 10% (the same size), each against its own retrained model.
    assert {s["forget_size"] for s in result["setups"]} == {144}
    assert result["setups"][0]["retrained"] != result["setups"][1]["retrained"]
    heading = classifier_methods.markdown("random", result, tuned=False).splitlines()[1]
    assert "2 splits (split seeds 5-6)" in heading and "--set sfron.temperature=0.25 train.steps=30" in heading


def test_tune_prints_how_much_the_setting_matters():
    rows = [{"method": "ga", "avg_gap": gap, "config": {"lr": lr}, "ua": 0, "ra": 1, "ta": 1, "mia": 0,
             "runs": [{"avg_gap": gap}], "seconds": 1.0} for gap, lr in ((0.01, 0.01), (0.03, 0.03), (0.2, 0.1))]
    setup = {"original": {"ua": 0, "ra": 1, "ta": 1, "mia": 0}, "retrained": {"ua": 0, "ra": 1, "ta": 1, "mia": 0},
             "forget_size": 144}
    result = {"recipe": {"sfron": {"steps": 5}, "forget": {"fraction": 0.1}}, "setups": [setup], "rows": rows,
              "variants": [0], "loop_seeds": [0, 1], "setup_seconds": 1.0}
    text = classifier_methods.markdown("random", result, tuned=True)
    assert "| GA | 3 | 1.00 | 3.00 | 20.00 |" in text


def test_paper_defaults_put_every_method_on_the_same_setting():
    recipe = classifier_methods.apply_overrides(
        classifier_methods.load_recipe(classifier_methods.PIPELINES_DIR / "classifier-digits-random.toml"),
        list(classifier_methods.paper_overrides()),
    )
    for method in ("ga", "rl", "salun", "sfron"):
        config = classifier_methods.method_config(recipe, method)
        assert {k: getattr(config, k) for k in classifier_methods.PAPER_DEFAULTS} == classifier_methods.PAPER_DEFAULTS
    assert recipe["fisher"]["salun_fraction"] == 0.5


def test_grid_replacements_and_edges():
    grid = classifier_methods.parse_grid(["lr=0.003,0.01", "lr_schedule=constant", "gamma=1"])
    sfron = classifier_methods.grid_for("sfron", grid)
    assert sfron["lr"] == (0.003, 0.01) and sfron["lr_schedule"] == ("constant",) and sfron["gamma"] == (1.0,)
    assert sfron["forget_alpha"] == classifier_methods.GRID["forget_alpha"]
    assert "gamma" not in classifier_methods.grid_for("ga", grid)  # another method's knob is not its business
    assert classifier_methods.grid_size("ft", grid) == 2
    best = {"lr": 0.01, "lr_schedule": "constant", "forget_alpha": 25.0, "grad_clip": 1.0, "gamma": 1.0}
    assert classifier_methods.edges(sfron, best) == ["lr highest", "grad_clip lowest"]
    for bad in (["lr"], ["lr="], ["bogus=1,2"]):
        try:
            classifier_methods.parse_grid(bad)
        except ValueError as error:
            assert "KEY=V1,V2" in str(error)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_retraining_with_other_seeds_gives_a_scale_for_the_gap():
    item = ("random", 2, (5,), (), False, 1, ("ft",), (0, 1), ("train.steps=30",), (), 1)
    result = classifier_methods.run_task(item)
    (setup,) = result["setups"]
    (other,) = setup["retrained_other_seeds"]
    assert other != setup["retrained"]  # another training seed lands elsewhere
    line = next(l for l in classifier_methods.markdown("random", result, tuned=False).splitlines()
                if l.startswith("| Retrain, 1 other training seed"))
    gap = 100 * classifier_methods.gaps(other, setup["retrained"])[1]
    assert f"| {gap:.2f} |" in line


def test_the_table_pairs_sfron_with_each_method_by_split():
    def row(method, gaps_):
        return {"method": method, "avg_gap": sum(gaps_) / len(gaps_), "config": {"lr": 0.01}, "ua": 0, "ra": 1,
                "ta": 1, "mia": 0, "runs": [{"avg_gap": g} for g in gaps_], "seconds": 1.0}

    setup = {"original": {"ua": 0, "ra": 1, "ta": 1, "mia": 0}, "retrained": {"ua": 0, "ra": 1, "ta": 1, "mia": 0},
             "forget_size": 144}
    rows = [row("ga", [0.010, 0.020, 0.030]), row("sfron", [0.012, 0.016, 0.026])]
    result = {"recipe": {"sfron": {"steps": 5}, "forget": {"fraction": 0.1}}, "setups": [setup] * 3, "rows": rows,
              "variants": [3, 4, 5], "loop_seeds": [0, 1], "setup_seconds": 1.0}
    text = classifier_methods.markdown("random", result, tuned=False)
    # differences +0.2, -0.4, -0.4 points: mean -0.20, standard deviation 0.35, standard error 0.35 / sqrt(3) = 0.20
    assert "- SFR-on − GA: -0.20 ± 0.20; SFR-on nearer on 2, GA on 1 of 3 splits" in text


def test_jobs_split_a_comparison_by_method_and_retrain_other_seeds_once():
    from argparse import Namespace

    args = Namespace(jobs=2, seed_offset=1000, repeats=3, first_split=43, seeds=2, paper_defaults=False, overrides=[],
                     tasks=["random"], steps=None, classes=[0], tune=False, threads=1, retrain_seeds=1)
    items = classifier_methods.work_items(args, ["ga", "sfron"], ())
    assert sorted(item[6] for item in items) == [("ga",), ("sfron",)]
    assert [item[-1] for item in items] == [1, 0]  # the other-seed retrains run in the first item only
    assert all(item[2] == (43, 44) and item[7] == (1000, 3) for item in items)
    args.jobs = 1
    (item,) = classifier_methods.work_items(args, ["ga", "sfron"], ())
    assert item[6] == ("ga", "sfron") and item[-1] == 1


def test_merge_puts_methods_from_separate_runs_in_one_paired_table():
    setup = {"original": {"ua": 0, "ra": 1, "ta": 1, "mia": 0}, "retrained": {"ua": 0, "ra": 1, "ta": 1, "mia": 0},
             "forget_size": 144}

    def result(method, gaps_, floor=False):
        row = {"method": method, "avg_gap": sum(gaps_) / len(gaps_), "config": {"lr": 0.01}, "ua": 0, "ra": 1,
               "ta": 1, "mia": 0, "runs": [{"avg_gap": g} for g in gaps_], "seconds": 1.0}
        setups = [{**setup, "retrained_other_seeds": [setup["retrained"]] if floor else []}] * 3
        return {"random": {"recipe": {"sfron": {"steps": 5}, "forget": {"fraction": 0.1}}, "setups": setups,
                           "rows": [row], "variants": [3, 4, 5], "loop_seeds": [1000, 3], "overrides": [],
                           "setup_seconds": 1.0}}

    merged = classifier_methods.merge_results([result("sfron", [0.012, 0.016, 0.026]),
                                               result("ga", [0.010, 0.020, 0.030], floor=True)])
    assert [row["method"] for row in merged["random"]["rows"]] == ["ga", "sfron"]
    text = classifier_methods.markdown("random", merged["random"], tuned=False)
    assert "- SFR-on − GA: -0.20 ± 0.20; SFR-on nearer on 2, GA on 1 of 3 splits" in text
    assert "| Retrain, 1 other training seed(s) | - |" in text  # the other-seed retrains come from whichever run has them
    other = result("ga", [0.01, 0.02, 0.03])
    other["random"]["variants"] = [4, 5, 6]
    for bad in ([result("sfron", [0.01] * 3), other], [result("ga", [0.01] * 3), result("ga", [0.02] * 3)]):
        try:
            classifier_methods.merge_results(bad)
        except ValueError as error:
            assert "random:" in str(error)
        else:
            raise AssertionError("merged results of different comparisons")


def test_merge_keeps_every_cell_of_a_tune_and_refuses_it_as_a_table():
    setup = {"original": {"ua": 0, "ra": 1, "ta": 1, "mia": 0}, "retrained": {"ua": 0, "ra": 1, "ta": 1, "mia": 0},
             "forget_size": 144}
    cells = [{"method": "ga", "avg_gap": g, "config": {"lr": lr}, "runs": [{"avg_gap": g}]}
             for g, lr in ((0.1, 0.01), (0.2, 0.03))]
    part = {"random": {"recipe": {"sfron": {"steps": 5}}, "setups": [setup], "rows": cells, "variants": [0],
                       "loop_seeds": [0, 1], "overrides": [], "setup_seconds": 1.0}}
    sfron = {"random": {**part["random"], "rows": [{**cells[0], "method": "sfron"}]}}
    assert len(classifier_methods.merge_results([part, sfron], tuned=True)["random"]["rows"]) == 3
    try:
        classifier_methods.merge_results([part, sfron])
    except ValueError as error:
        assert "--tune" in str(error)
    else:
        raise AssertionError("a --tune result was merged into a table")
