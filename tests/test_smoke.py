"""Every script, both twins, on a tiny budget: plain, with --save-model (which runs evaluation), one
--track run under WANDB_MODE=offline, the BLAS opt-out, and same-seed determinism of the MLX side."""

import re

import numpy as np
import pytest

from tests.helpers import check_ok, episodic_returns, run_dirs, run_script, scalars_of_single_run

# Tiny-budget arguments per script; each pair adds its line here.
SMOKE = {
    "ppo": ["--env-id", "CartPole-v1", "--total-timesteps", "2048", "--eval-episodes", "2"],
    "dqn": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2".split(),
    "c51": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2".split(),
    "qrdqn": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2 --gradient-steps 8".split(),
}
CASES = [(name, fw) for name in SMOKE for fw in ("mlx", "torch")]


@pytest.mark.parametrize("name,framework", CASES)
def test_runs_and_logs(name, framework, tmp_path):
    proc = run_script(name, framework, *SMOKE[name], cwd=tmp_path)
    check_ok(proc)
    scalars = scalars_of_single_run(tmp_path)
    for tag in ("charts/SPS", "timing/env_us", "timing/inference_us", "timing/update_us"):
        assert tag in scalars, f"{tag} not logged; got {sorted(scalars)}"
    assert "eval/episodic_return" not in scalars


@pytest.mark.parametrize("name,framework", CASES)
def test_save_model_then_evaluate(name, framework, tmp_path):
    proc = run_script(name, framework, *SMOKE[name], "--save-model", cwd=tmp_path)
    check_ok(proc)
    (run_dir,) = run_dirs(tmp_path)
    assert list(run_dir.glob("*.safetensors")), f"no model saved in {run_dir}"
    scalars = scalars_of_single_run(tmp_path)
    n_eval = int(SMOKE[name][SMOKE[name].index("--eval-episodes") + 1])
    assert len(scalars["eval/episodic_return"]) == n_eval


def test_track_offline_writes_wandb_run(tmp_path):
    proc = run_script("ppo", "mlx", *SMOKE["ppo"], "--track", cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    check_ok(proc)
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((tmp_path / "wandb").glob("*"))
    # the run's history (.wandb file) holds the synced TensorBoard metrics
    # the run's record (.wandb) holds the config (framework split) and the synced TensorBoard metrics
    (record,) = offline_runs[0].glob("*.wandb")
    data = record.read_bytes()
    assert b"charts/SPS" in data and b"charts/episodic_return" in data
    assert b"framework" in data and b"ppo__CartPole-v1" in data


def test_bundled_blas_opt_out(tmp_path):
    proc = run_script("ppo", "mlx", *SMOKE["ppo"], cwd=tmp_path, env={"CLEANRL_MLX_BLAS": "bundled"})
    check_ok(proc)
    assert re.search(r"BLAS bundled\b", proc.stdout), proc.stdout[:500]
    (tmp_path / "default").mkdir()
    default = run_script("ppo", "mlx", *SMOKE["ppo"], cwd=tmp_path / "default")
    check_ok(default)
    assert "BLAS bundled" not in default.stdout or "not found" in default.stdout


@pytest.mark.parametrize("name", [n for n in SMOKE])
def test_mlx_same_seed_same_run(name, tmp_path):
    returns = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        check_ok(run_script(name, "mlx", *SMOKE[name], "--total-timesteps", "8192", cwd=tmp_path / sub))
        scalars = scalars_of_single_run(tmp_path / sub)
        returns.append(episodic_returns(scalars))
        losses = {k: v for k, v in scalars.items() if k.startswith("losses/")}
        returns.append(np.array([v for k in sorted(losses) for _, v in losses[k]]))
    assert len(returns[0]) > 0
    np.testing.assert_array_equal(returns[0], returns[2])
    np.testing.assert_array_equal(returns[1], returns[3])
