"""bench/sd_job_speed.py --smoke: the whole-job benchmark runs the real `erase sd` workflow end to end on a
tiny pipeline and extrapolates every phase to the full recipe (its GPU run is one call of the same code)."""

import importlib.util
import json

from erase.recipes import REPO_ROOT
from erase.workflows.timings import PHASES


def load_bench():
    spec = importlib.util.spec_from_file_location("sd_job_speed", REPO_ROOT / "bench" / "sd_job_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_times_every_phase_and_extrapolates(tmp_path, capsys):
    bench = load_bench()
    result = bench.main(["--smoke", "--out", str(tmp_path), "--json", str(tmp_path / "job.json")])
    printed = capsys.readouterr().out
    assert "full recipe s" in printed and "steps/s" in printed
    assert json.loads((tmp_path / "job.json").read_text()) == result
    assert result["num_images"] == {"forget": 4, "remain": 4} and result["steps"] == 2
    assert set(result["timings"]) == {*PHASES, "steps_per_second"}
    assert all(result["timings"][phase] > 0 for phase in PHASES)
    full, short = result["full_recipe"], result["fifty_steps"]
    assert set(full) == set(short) == set(PHASES)
    # per image × 2,000, per Fisher batch × 1,000, per step × 1,000 (or × 50)
    t = result["timings"]
    assert full["generate"] == round(t["generate"] / 8 * 2000, 1)
    assert full["fisher"] == round(t["fisher"] / 4 * 1000, 1)
    assert full["loop"] == round(t["loop"] / 2 * 1000, 1) and short["loop"] == round(t["loop"] / 2 * 50, 1)
    # the job ran as `erase sd` runs: a whole run folder, the SD v1.4 recipe's settings at bench size
    run = tmp_path / "run"
    for name in ("metrics.json", "mask.safetensors", "patch.safetensors", "model/model_index.json"):
        assert (run / name).is_file(), name
