"""Checkpoint and resume (--checkpoint-every, --keep-checkpoints, --resume) for the long-running scripts.

Every resumable pair, both twins: a run that checkpoints, resumed to a larger budget, continues the same run
folder with TensorBoard steps strictly increasing and no gap. sac and ppo_continuous_action on Pendulum-v1 (its
env pickles): a run killed with SIGKILL right after a checkpoint and resumed ends exactly where an uninterrupted
run with the same seed ends (same returns after the checkpoint, same weights, same replay buffer). Checkpoints
cross frameworks. Bad --resume input: one line, nothing overwritten. A write interrupted before its rename leaves
the previous checkpoint loadable. The checkpoint functions are the same text in every script.
"""

import ast
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from benchmark.report import read_scalars
from tests.helpers import (
    assert_close,
    assert_same_weights,
    check_ok,
    load_script,
    run_dirs,
    run_script,
    script_command,
    script_path,
)

FRAMEWORKS = ("mlx", "torch")
# pair: (arguments of every run, N: the checkpoint interval; runs go to N, then resume to 2N)
RESUMABLE = {
    "ppo_continuous_action": ("--env-id Pendulum-v1 --num-envs 1 --num-steps 64 --num-minibatches 4".split(), 256),
    "ppo_atari": ("--num-envs 2 --num-steps 32 --num-minibatches 2".split(), 128),
    "ppo_atari_envpool": ("--num-envs 2 --num-steps 32 --num-minibatches 2".split(), 128),
    "ppo_atari_lstm": ("--num-envs 2 --num-steps 32 --num-minibatches 2".split(), 128),
    "ppo_atari_multigpu": ("--local-num-envs 2 --num-steps 32 --num-minibatches 2".split(), 128),  # one rank
    "sac": ("--env-id Pendulum-v1 --learning-starts 100 --batch-size 64".split(), 300),
    "td3": ("--env-id Pendulum-v1 --learning-starts 100 --batch-size 64".split(), 300),
    "ddpg": ("--env-id Pendulum-v1 --learning-starts 100 --batch-size 64".split(), 300),
    "dqn_atari": ("--buffer-size 1000 --learning-starts 200".split(), 300),
}
EXACT = ["sac", "ppo_continuous_action"]  # Pendulum pickles: the resumed run must equal the uninterrupted one
SHARED_FUNCTIONS = ("save_checkpoint", "sha256", "load_checkpoint", "restore_rng")


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:012d}"


def read_checkpoint(folder: Path) -> tuple[dict, dict]:
    arrays = safetensors.numpy.load_file(folder / "arrays.safetensors")
    arrays |= {p.stem: np.load(p) for p in folder.glob("*.npy")}
    return arrays, json.loads((folder / "state.json").read_text())


def only_run(cwd) -> Path:
    (run_dir,) = run_dirs(cwd)
    return run_dir


def files_of(path: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_halves(tmp_path_factory):
    """For each (pair, framework) asked for, a run to N with a checkpoint every N/2 (computed once per module)."""
    cache = {}

    def get(name, framework):
        if (name, framework) not in cache:
            cwd = tmp_path_factory.mktemp(f"{name}-{framework}")
            args, n = RESUMABLE[name]
            check_ok(run_script(name, framework, *args, "--total-timesteps", n, "--checkpoint-every", n // 2, cwd=cwd))
            cache[name, framework] = cwd
        return cache[name, framework]

    return get


def wait_for_a_new_second(run_dir: Path):
    """tensorboardX names an event file after the second it opened it in, and opens it with "wb": a resume started
    in the same second as the run it continues (only a test is that fast) would overwrite that run's log."""
    newest = max(int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*"))
    while time.time() < newest + 1:
        time.sleep(0.05)


def copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", RESUMABLE)
def test_resume_continues_the_same_run_without_gaps(name, framework, first_halves, tmp_path):
    args, n = RESUMABLE[name]
    cwd = copy_tree(first_halves(name, framework), tmp_path / "run")
    run_dir = only_run(cwd)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step_{n // 2:012d}", f"step_{n:012d}"]
    before = read_scalars(run_dir)

    wait_for_a_new_second(run_dir)
    proc = run_script(
        name, framework, *args, "--total-timesteps", 2 * n, "--checkpoint-every", n // 2, "--resume", run_dir, cwd=cwd
    )
    check_ok(proc)
    assert only_run(cwd) == run_dir, "the resumed run must log into the same run folder"
    # keep-checkpoints 2 (the default): the two newest are left
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step_{3 * n // 2:012d}", f"step_{2 * n:012d}"]
    assert read_checkpoint(checkpoint(run_dir, 2 * n))[1]["global_step"] == 2 * n

    # each process's own event file, read on its own: the first run's SPS steps, then the resumed run's, which
    # purges from just after the checkpoint (a SessionLog START) and continues at the same spacing to the budget
    (first_file, resumed_file) = sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    first, starts = sps_steps(first_file)
    assert first == [s for s, _ in before["charts/SPS"]] if "charts/SPS" in before else not first
    resumed, starts = sps_steps(resumed_file)
    assert len(starts) == 1 and (first[-1] if first else 0) < starts[0] <= n + 1, f"purge step {starts}, first run {first}"
    sps = first + resumed
    gaps = np.diff(sps)
    assert (gaps > 0).all() and len(set(gaps)) == 1, f"charts/SPS steps are not evenly spaced: {sps}"
    assert sps[-1] > 2 * n - 2 * gaps[0], f"the curve stops at {sps[-1]}, the budget is {2 * n}"


def sps_steps(event_file: Path) -> tuple[list, list]:
    """(the charts/SPS steps, the SessionLog START steps) of one event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps, starts = [], []
    for event in EventFileLoader(str(event_file)).Load():
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            starts.append(event.step)
        steps += [event.step for v in event.summary.value if v.tag == "charts/SPS"]
    return steps, starts


def kill_after_checkpoint(cmd, env, cwd, step) -> Path:
    """Start a run, SIGKILL it as soon as its checkpoint at `step` is complete; return its run folder."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(Path(cwd).glob(f"runs/*/checkpoints/step_{step:012d}/state.json")):
        assert proc.poll() is None, f"the run ended before its checkpoint at {step}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return only_run(cwd)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", EXACT)
def test_killed_and_resumed_run_equals_the_uninterrupted_one(name, framework, tmp_path):
    args, n = RESUMABLE[name]
    flags = [*args, "--total-timesteps", 2 * n, "--checkpoint-every", n, "--save-model", "--eval-episodes", "1"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    check_ok(run_script(name, framework, *flags, cwd=tmp_path / "a"))
    cmd, env = script_command(name, framework, *flags)
    run_b = kill_after_checkpoint(cmd, env, tmp_path / "b", n)
    wait_for_a_new_second(run_b)
    check_ok(run_script(name, framework, *flags, "--resume", checkpoint(run_b, n), cwd=tmp_path / "b"))
    run_a = only_run(tmp_path / "a")

    def returns_after_n(run_dir):
        return [(s, v) for s, v in read_scalars(run_dir)["charts/episodic_return"] if s > n]

    assert returns_after_n(run_a) and returns_after_n(run_a) == returns_after_n(run_b)
    (weights_a,), (weights_b,) = run_a.glob("*.safetensors"), run_b.glob("*.safetensors")
    assert weights_a.read_bytes() == weights_b.read_bytes(), "the final weights differ"
    (arrays_a, state_a), (arrays_b, state_b) = (read_checkpoint(checkpoint(r, 2 * n)) for r in (run_a, run_b))
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:  # networks, targets, optimizer moments, replay buffer, normalisation statistics, RNG
        if key != "envs.pkl":  # the pickled envs hold wall-clock episode timers
            assert np.array_equal(arrays_a[key], arrays_b[key]), f"{key} differs after resume"
    assert state_a["counters"] == state_b["counters"]


@pytest.mark.parametrize("name", ["sac", "dqn_atari"])
def test_replay_buffer_survives_resume(name, first_halves, tmp_path):
    """The buffer a resumed run holds starts with what was saved: the filled rows at N are the first rows at 2N
    (the buffer is larger than 2N transitions, so nothing is overwritten in between), and the counters moved on."""
    args, n = RESUMABLE[name]
    cwd = copy_tree(first_halves(name, "mlx"), tmp_path / "run")
    run_dir = only_run(cwd)
    wait_for_a_new_second(run_dir)
    check_ok(run_script(name, "mlx", *args, "--total-timesteps", 2 * n, "--checkpoint-every", n, "--resume", run_dir, cwd=cwd))
    (saved, _), (later, _) = read_checkpoint(checkpoint(run_dir, n)), read_checkpoint(checkpoint(run_dir, 2 * n))
    buffer_keys = [k for k in saved if k.startswith("rb.")]
    assert buffer_keys, f"no replay buffer arrays (rb.*) in the checkpoint: {sorted(saved)}"
    for key in buffer_keys:
        assert len(later[key]) > len(saved[key]) and np.array_equal(later[key][: len(saved[key])], saved[key]), key


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("source,target", [("mlx", "torch"), ("torch", "mlx")])
def test_checkpoint_resumes_in_the_other_framework(name, source, target, first_halves, tmp_path):
    args, n = RESUMABLE[name]
    cwd = copy_tree(first_halves(name, source), tmp_path / "run")
    run_dir = only_run(cwd)
    saved, _ = read_checkpoint(checkpoint(run_dir, n))
    wait_for_a_new_second(run_dir)
    proc = run_script(
        name, target, *args, "--total-timesteps", n + n // 2, "--checkpoint-every", n // 2, "--resume", run_dir, cwd=cwd
    )
    check_ok(proc)
    later, state = read_checkpoint(checkpoint(run_dir, n + n // 2))
    assert state["framework"] == target and state["global_step"] == n + n // 2
    assert sorted(k for k in later if not k.startswith("rng.")) == sorted(k for k in saved if not k.startswith("rng."))
    for key in saved:  # the same names and shapes on both sides
        grows = key.startswith("rb.")  # a replay buffer is saved up to its fill, which grew
        if not key.startswith("rng.") and key != "envs.pkl":  # envs.pkl: pickled bytes, their length varies
            assert later[key].shape[grows:] == saved[key].shape[grows:], key


@pytest.mark.parametrize("source", FRAMEWORKS)
def test_first_update_after_a_cross_framework_resume_gives_the_same_loss(source, first_halves):
    """One ppo_continuous_action checkpoint restored into both twins as --resume restores it (networks, Adam moments,
    step count, learning rate): the first update on the same minibatch gives the same loss terms and weights."""
    import mlx.core as mx
    import torch

    args, n = RESUMABLE["ppo_continuous_action"]
    folder = checkpoint(only_run(first_halves("ppo_continuous_action", source)), n)
    twins = {fw: load_script("ppo_continuous_action", fw) for fw in FRAMEWORKS}
    run_args = twins["mlx"].Args(env_id="Pendulum-v1", num_envs=1, total_timesteps=4 * n)
    arrays, _ = twins["mlx"].load_checkpoint(folder, "ppo_continuous_action_mlx.py", run_args)
    agents = {}
    for fw, m in twins.items():
        agents[fw] = m.Agent(3, 1)
        optimizer = m.make_optimizer(agents[fw], m.Args())
        m.restore_arrays(arrays, {"agent": agents[fw]}, {"optimizer.agent": optimizer}, "test", 0)
        agents[fw] = (agents[fw], optimizer)
    assert_same_weights(agents["mlx"][0], agents["torch"][0], what="restored")
    rng = np.random.default_rng(0)
    batch = [rng.normal(size=shape).astype(np.float32) for shape in ((64, 3), (64, 1), (64,), (64,), (64,), (64,))]
    batch[2] -= 1.0  # log-probs of actions the policy found likely enough to take
    coefs = {k: getattr(run_args, k) for k in ("max_grad_norm", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss")}
    inds = np.arange(64)
    m_stats = twins["mlx"].train_step(*agents["mlx"], mx.array(inds), *map(mx.array, batch), **coefs)
    t_stats = twins["torch"].train_step(*agents["torch"], torch.tensor(inds), *map(torch.tensor, batch), **coefs)
    for name, a, b in zip(("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac"), m_stats, t_stats):
        assert_close(a, b, atol=1e-5, what=name)
    assert_same_weights(agents["mlx"][0], agents["torch"][0], what="after the first update")
    assert arrays["optimizer.step"] > 0, "the checkpoint should carry a trained optimizer"


# ---------------------------------------------------------------- bad --resume input


def corrupt(folder: Path) -> None:
    data = bytearray((folder / "arrays.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "arrays.safetensors").write_bytes(bytes(data))


def reshape_one_array(folder: Path) -> None:
    """Rewrite the checkpoint with one network array of another shape (and checksums that match)."""
    arrays, state = read_checkpoint(folder)
    key = next(k for k in sorted(arrays) if k.endswith("weight"))
    arrays[key] = np.zeros((arrays[key].shape[0] + 1, *arrays[key].shape[1:]), arrays[key].dtype)
    safetensors.numpy.save_file(arrays, folder / "arrays.safetensors")
    state["sha256"]["arrays.safetensors"] = hashlib.sha256((folder / "arrays.safetensors").read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(state))


def other_script(folder: Path) -> None:
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps(state | {"script": "td3"}))


def bad_resume(case, run_dir: Path, ck: Path) -> tuple:
    """(the --resume path, extra arguments) that make one kind of bad input from a good run and its checkpoint."""
    if case == "missing path":
        return "no/such/run", []
    if case == "no checkpoint":
        return run_dir.parent, []  # runs/: a folder, but no checkpoints/ in it
    if case == "another algorithm":
        other_script(ck)
    if case == "corrupted file":
        corrupt(ck)
    if case == "other shapes":
        reshape_one_array(ck)
    extra = {"another env id": ["--env-id", "MountainCarContinuous-v0"], "another num_envs": ["--num-envs", "2"]}
    return ck, extra.get(case, ["--total-timesteps", str(RESUMABLE["sac"][1])] if case == "budget reached" else [])


BAD_RESUME = {
    "missing path": "no such file or directory",
    "no checkpoint": "no checkpoint found",
    "another algorithm": "a checkpoint of td3, not sac",
    "another env id": "made on Pendulum-v1, not MountainCarContinuous-v0",
    "another num_envs": "made with --num-envs 1, not 2",
    "corrupted file": "arrays.safetensors is corrupted (checksum mismatch)",
    "other shapes": "in the checkpoint",
    "budget reached": "is already reached",
}


# The checks are load_checkpoint's, one text in every script (test_checkpoint_functions_are_the_same_text_everywhere), but
# the shapes' (restore_arrays, framework code): every case in MLX, and in torch that one and a file check (~8 s a run).
TORCH_BAD_RESUME = ("other shapes", "corrupted file")


@pytest.mark.parametrize(
    "case,framework", [(case, fw) for case in BAD_RESUME for fw in FRAMEWORKS if fw == "mlx" or case in TORCH_BAD_RESUME]
)
def test_bad_resume_input_is_one_line_and_overwrites_nothing(case, framework, first_halves, tmp_path):
    args, n = RESUMABLE["sac"]
    cwd = copy_tree(first_halves("sac", framework), tmp_path / "run")
    run_dir = only_run(cwd)
    message = BAD_RESUME[case]
    path, extra = bad_resume(case, run_dir, checkpoint(run_dir, n))
    before = files_of(cwd)
    proc = run_script("sac", framework, *args, "--total-timesteps", 2 * n, *extra, "--resume", path, cwd=cwd)
    assert proc.returncode != 0, proc.stdout[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and message in last and "--resume" in last, proc.stderr[-2000:]
    after = files_of(cwd)
    assert all(after.get(p) == h for p, h in before.items()), "a file of the run was changed or removed"


# ---------------------------------------------------------------- the shared functions


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_interrupted_write_leaves_the_previous_checkpoint_loadable(framework, tmp_path, monkeypatch):
    m = load_script("sac", framework)
    args = m.Args(env_id="Pendulum-v1", total_timesteps=1000)
    state = {"script": "sac", "framework": framework, "run_name": "r", "env_id": "Pendulum-v1", "num_envs": 1}
    m.save_checkpoint(tmp_path, {"w": np.ones(3, np.float32)}, state | {"global_step": 10}, keep=2)

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(m.os, "replace", crash)
    with pytest.raises(OSError):
        m.save_checkpoint(tmp_path, {"w": np.zeros(3, np.float32)}, state | {"global_step": 20}, keep=2)
    arrays, loaded = m.load_checkpoint(tmp_path, "sac_mlx.py", args)
    assert loaded["global_step"] == 10 and np.array_equal(arrays["w"], np.ones(3, np.float32))
    assert not (tmp_path / "checkpoints" / f"step_{20:012d}").exists()


def test_checkpoint_functions_are_the_same_text_everywhere():
    texts = {}
    for name in RESUMABLE:
        for framework in FRAMEWORKS:
            source = script_path(name, framework).read_text()
            nodes = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
            missing = [f for f in SHARED_FUNCTIONS if f not in nodes]
            assert not missing, f"{name}_{framework} lacks {missing}"
            texts[f"{name}_{framework}"] = [ast.get_source_segment(source, nodes[f]) for f in SHARED_FUNCTIONS]
    reference = texts.pop("sac_mlx")
    for script, text in texts.items():
        for function, a, b in zip(SHARED_FUNCTIONS, reference, text):
            assert a == b, f"{function} in {script} differs from sac_mlx's"


@pytest.mark.parametrize("name", RESUMABLE)
def test_help_documents_the_flags(name):
    cmd, env = script_command(name, "mlx", "--help")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).stdout
    for flag in ("--checkpoint-every", "--keep-checkpoints", "--resume"):
        assert flag in out, f"{name} --help does not mention {flag}"


def test_not_resumable_scripts_stay_lean():
    for name in ("ppo", "a2c", "dqn", "c51", "qrdqn", "allo", "qrdqn_actor_learner"):
        assert "checkpoint_every" not in script_path(name, "mlx").read_text(), name
