"""Every script, both twins, on a tiny budget: two same-seed runs with --save-model (which runs
evaluation), one with --capture-video (MLX) and one with --track under WANDB_MODE=offline, that must save the
same weights; MuJoCo runs of the continuous-control scripts; the BLAS opt-out."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmark.pairs import discover, script_path
from tests.helpers import REPO, check_ok, run_dirs, run_script, scalars_of_single_run

# Tiny-budget arguments per script; each pair adds its line here. A key "name:variant" runs script
# `name` once more with other arguments (e.g. the continuous head of a script that has both).
SMOKE = {
    "ppo": ["--env-id", "CartPole-v1", "--total-timesteps", "2048", "--eval-episodes", "2"],
    "pqn": ["--env-id", "CartPole-v1", "--total-timesteps", "2048", "--eval-episodes", "2"],
    "a2c": ["--env-id", "CartPole-v1", "--total-timesteps", "2000", "--eval-episodes", "2"],
    "a2c:continuous": ["--env-id", "Pendulum-v1", "--total-timesteps", "1000", "--eval-episodes", "1"],
    # the in-process actor: deterministic (the multi-process paths are in test_parity_qrdqn_actor_learner.py)
    "qrdqn_actor_learner": ["--env-id", "CartPole-v1", "--num-actors", "0", "--total-timesteps", "2000", "--eval-episodes", "2"],
    "ppo_atari": [
        "--num-envs",
        "2",
        "--num-steps",
        "32",
        "--total-timesteps",
        "128",
        "--num-minibatches",
        "2",
        "--eval-episodes",
        "1",
    ],
    "dqn_atari": ["--buffer-size", "2000", "--learning-starts", "200", "--total-timesteps", "400", "--eval-episodes", "1"],
    "ppo_atari_multigpu": "--local-num-envs 2 --num-steps 32 --total-timesteps 128 --num-minibatches 2 --eval-episodes 1".split(),
    "ppo_atari_lstm": "--num-envs 2 --num-steps 32 --total-timesteps 128 --num-minibatches 2 --eval-episodes 1".split(),
    "ppo_atari_envpool": "--env-id Breakout-v5 --num-envs 2 --num-steps 32 --total-timesteps 128 --num-minibatches 2 --eval-episodes 1".split(),
    "ppo_continuous_action": "--env-id Pendulum-v1 --num-steps 64 --num-minibatches 4 --total-timesteps 256 --eval-episodes 2".split(),
    "sac": ["--env-id", "Pendulum-v1", "--total-timesteps", "400", "--learning-starts", "100", "--eval-episodes", "2"],
    "td3": ["--env-id", "Pendulum-v1", "--total-timesteps", "400", "--learning-starts", "100", "--eval-episodes", "2"],
    "ddpg": ["--env-id", "Pendulum-v1", "--total-timesteps", "400", "--learning-starts", "100", "--eval-episodes", "2"],
    "dqn": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2".split(),
    "c51": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2".split(),
    "qrdqn": "--env-id CartPole-v1 --total-timesteps 2000 --learning-starts 500 --buffer-size 1000 --eval-episodes 2 --gradient-steps 8".split(),
    "allo": "--env-id GridRoomSmallAsym-1 --d 3 --n-samples 2040 --total-train-steps 30 --batch-size 32 --hidden-dims 16 16".split(),
}
# Continuous-control scripts also run on a MuJoCo env (train, save, evaluate); each pair adds its line here.
SMOKE_MUJOCO = {
    "ppo_continuous_action": "--env-id HalfCheetah-v5 --num-steps 64 --num-minibatches 4 --total-timesteps 256 --eval-episodes 1".split(),
    **{
        name: ["--env-id", "HalfCheetah-v5", "--total-timesteps", "300", "--learning-starts", "100", "--eval-episodes", "1"]
        for name in ("sac", "td3", "ddpg")
    },
}
# Scripts that normalise observations save the statistics next to the weights (`{exp_name}.obs_rms.npz`).
SAVES_OBS_RMS = {"ppo_continuous_action"}
# Scripts with --capture-video (allo's gridworld has no renderer); recorded in MLX only, ~4 s a run: the twins'
# make_env, which wraps the recorder, is one text (tests/test_twin_fidelity.py).
VIDEO = [name for name in SMOKE if not name.startswith("allo")]
CASES = [(name, fw) for name in SMOKE for fw in ("mlx", "torch")]


def script(case: str) -> str:
    return case.split(":")[0]


@pytest.mark.parametrize("name,framework", CASES)
def test_same_seed_same_run_tracked_recorded_evaluated(name, framework, tmp_path):
    """Twice with the same seed and --save-model, the first also with --capture-video (MLX), the second with
    --track under WANDB_MODE=offline: the saved weights are the same bytes and the logged returns and
    losses the same numbers (recording and tracking change nothing that is learned); the timing tags
    are logged, evaluation ran, the first run wrote videos, and the W&B run holds the config keys a
    dashboard filters on and the synced TensorBoard metrics."""
    runs, video = [], name in VIDEO and framework == "mlx"
    for sub, extra in (("a", ["--capture-video"] if video else []), ("b", ["--track"])):
        (tmp_path / sub).mkdir()
        proc = run_script(
            script(name), framework, *SMOKE[name], "--save-model", *extra, cwd=tmp_path / sub, env={"WANDB_SILENT": "true"}
        )
        check_ok(proc)
        (run_dir,) = run_dirs(tmp_path / sub)
        (weights,) = run_dir.glob("*.safetensors")
        scalars = scalars_of_single_run(tmp_path / sub)
        for tag in ("charts/SPS", "timing/update_us"):
            assert tag in scalars, f"{tag} not logged; got {sorted(scalars)}"
        logged = {k: [v for _, v in vals] for k, vals in scalars.items() if k.startswith(("charts/episodic", "losses/", "eval/"))}
        runs.append((weights.read_bytes(), logged, run_dir))
    assert runs[0][0] == runs[1][0], "same seed, different weights"
    assert runs[0][1] == runs[1][1], "same seed, different returns or losses"
    if name in SAVES_OBS_RMS:
        check_obs_rms_saved(runs[0][2])
    if "--eval-episodes" in SMOKE[name]:
        n_eval = int(SMOKE[name][SMOKE[name].index("--eval-episodes") + 1])
        assert len(runs[0][1]["eval/episodic_return"]) == n_eval
    if video:
        videos = list((tmp_path / "a" / "videos").rglob("*.mp4"))
        assert videos and all(v.stat().st_size > 0 for v in videos), "--capture-video wrote no video"
    (offline_run,) = (tmp_path / "b" / "wandb").glob("offline-run-*")
    (record,) = offline_run.glob("*.wandb")
    data = record.read_bytes()
    env_id = SMOKE[name][SMOKE[name].index("--env-id") + 1] if "--env-id" in SMOKE[name] else "BreakoutNoFrameskip-v4"
    assert b"charts/SPS" in data and b"framework" in data and framework.encode() in data
    assert f"{script(name)}__{env_id}".encode() in data, "the W&B group is {algo}__{env_id}"
    # the TensorBoard folder is named to W&B (wandb.tensorboard.patch): otherwise it waits 10 s at exit to infer it
    assert b"no root directory" not in (offline_run / "logs" / "debug-internal.log").read_bytes()


def check_obs_rms_saved(run_dir):
    (path,) = run_dir.glob("*.obs_rms.npz")
    with np.load(path) as rms:
        assert rms["count"] > 1 and np.all(np.isfinite(rms["mean"])) and np.all(rms["var"] > 0), dict(rms)


@pytest.mark.parametrize("name,framework", [(name, fw) for name in SMOKE_MUJOCO for fw in ("mlx", "torch")])
def test_mujoco_train_save_evaluate(name, framework, tmp_path):
    proc = run_script(name, framework, *SMOKE_MUJOCO[name], "--save-model", cwd=tmp_path)
    check_ok(proc)
    (run_dir,) = run_dirs(tmp_path)
    if name in SAVES_OBS_RMS:
        check_obs_rms_saved(run_dir)
    assert list(run_dir.glob("*.safetensors")), f"no model saved in {run_dir}"
    scalars = scalars_of_single_run(tmp_path)
    for tag in ("charts/SPS", "timing/update_us"):
        assert tag in scalars, f"{tag} not logged; got {sorted(scalars)}"
    assert len(scalars["eval/episodic_return"]) == int(SMOKE_MUJOCO[name][SMOKE_MUJOCO[name].index("--eval-episodes") + 1])


def test_bundled_blas_opt_out(tmp_path):
    proc = run_script("ppo", "mlx", *SMOKE["ppo"], cwd=tmp_path, env={"CLEANRL_MLX_BLAS": "bundled"})
    check_ok(proc)
    assert re.search(r"BLAS bundled\b", proc.stdout), proc.stdout[:500]
    (tmp_path / "default").mkdir()
    default = run_script("ppo", "mlx", *SMOKE["ppo"], cwd=tmp_path / "default")
    check_ok(default)
    assert "BLAS bundled" not in default.stdout or "not found" in default.stdout


def test_mlx_scripts_do_not_import_torch():
    """tensorboardX imports torch whenever it is installed (~1.5 s, ~180 MB per process): every MLX
    script hides it while importing tensorboardX, so its start-up and memory are MLX's own."""
    code = (
        "import sys\n"
        "from benchmark.pairs import discover, load_script\n"
        "for name in discover():\n"
        "    load_script(name, 'mlx')\n"
        "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
        "import torch\n"  # and torch itself still imports afterwards
        "print('ok', len(discover()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stdout + proc.stderr


def test_a_tracked_mlx_run_does_not_import_torch(tmp_path):
    """W&B's TensorBoard patch imports torch too (~210 MB more peak RSS for a `benchmark.run --track` MLX run): an MLX
    script hides torch from it as from tensorboardX. One run shows it; every MLX script has the same guard."""
    guard = 'sys.modules.setdefault("torch", None)  # W&B\'s TensorBoard patch imports torch too'
    assert all(guard in script_path(name, "mlx").read_text() for name in discover())
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['ppo_mlx.py', *{SMOKE['ppo']!r}, '--track']\n"
        f"runpy.run_path({str(script_path('ppo', 'mlx'))!r}, run_name='__main__')\n"
        "print('torch loaded:', sys.modules.get('torch') is not None)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    check_ok(proc)
    assert proc.stdout.strip().endswith("torch loaded: False"), proc.stdout[-500:]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "the run was not tracked"
