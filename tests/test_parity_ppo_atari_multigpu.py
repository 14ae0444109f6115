"""ppo_atari_multigpu_mlx vs ppo_atari_multigpu_torch, one process and several (2 ranks on localhost, tiny budgets).

In one process: the same weights give the same loss terms and gradients, and the scripts' own train_step (one rank)
the same weights, the torch one being CleanRL's clipped first Adam step. Across 2 ranks (mlx.launch's ring backend,
torchrun's gloo): each rank's averaged gradient equals the gradient of the mean loss over the union of the ranks'
minibatches computed in one process (and, without advantage normalisation, the gradient of the loss on the
concatenated minibatch), in both twins, and the twins agree; a 2-rank run ends with exit code 0, one TensorBoard run
written by rank 0 up to the budget, the same parameters on every rank and different data; a run stopped with Ctrl-C
on the launcher checkpoints and resumes on 2 ranks; a rank that is SIGKILLed or raises ends the whole job within 60 s
with a message that names it. The MLX runs go through mlx.launch and, for the 2-rank run, a SIGKILLed rank and Ctrl-C,
through the docs' mlx_ranks bash function too (taken from the page, so the two cannot drift apart). With one rank the
script is the single-process ppo_atari, step for step.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from benchmark.report import read_scalars
from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_same_grads,
    assert_same_init,
    assert_same_weights,
    check_ok,
    load_script,
    run_dirs,
    run_script,
    script_path,
    torch_grads,
    torch_params,
    torch_params_to_mlx,
)

NAME = "ppo_atari_multigpu"
P_MLX = load_script(NAME, "mlx")
P_TORCH = load_script(NAME, "torch")
N_ACTIONS, B = 4, 32
KEYS = ("obs", "actions", "logprobs", "advantages", "returns", "values")
STATS = ("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac")
TINY = "--local-num-envs 1 --num-steps 32 --num-minibatches 2".split()  # 64 steps per iteration with 2 ranks


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(N_ACTIONS)
    m_agent = P_MLX.Agent(N_ACTIONS)
    with torch.no_grad():  # a policy head far from uniform, so the clipped branches are exercised
        t_agent.actor.weight.normal_(0, 0.05)
    torch_params_to_mlx(t_agent, m_agent)
    return t_agent, m_agent


def test_fresh_agents_are_initialised_alike():  # the other pairs check this in cross_load
    assert_same_init(P_MLX.Agent(N_ACTIONS), P_TORCH.Agent(N_ACTIONS))


def make_batch(seed, n=B):
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.integers(0, 256, size=(n, 4, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, N_ACTIONS, size=n),
        "logprobs": (np.log(1 / N_ACTIONS) + 0.3 * rng.normal(size=n)).astype(np.float32),
        "advantages": rng.normal(size=n).astype(np.float32),
        "returns": rng.normal(size=n).astype(np.float32),
        "values": rng.normal(size=n).astype(np.float32),
    }


def coefs(norm_adv):
    return dict(clip_coef=0.1, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=True)


def test_loss_terms_and_gradients(twins):
    t_agent, m_agent = twins
    b = make_batch(1)
    t_loss, t_stats = P_TORCH.ppo_loss(t_agent, *(torch.tensor(b[k]) for k in KEYS), **coefs(True))
    t_loss.backward()
    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, lambda *x: P_MLX.ppo_loss(m_agent, *x, **coefs(True)))(
        *(mx.array(b[k]) for k in KEYS)
    )
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    assert float(t_stats[5]) > 0, "the batch should exercise the clipped branch"
    assert_same_grads(m_grads, t_agent)


def test_one_full_update_on_one_rank(twins):
    """The scripts' own train_step and make_optimizer with default Args on one rank (average_gradients leaves the
    gradients as they are; MLX compiled, as the script runs it): the same weights and loss terms come out, and the torch
    step is a first Adam step (lr 2.5e-4, eps 1e-5) on gradients clipped to a global norm of 0.5."""
    t_agent, m_agent = twins
    args = P_MLX.Args()
    hyper = {k: getattr(args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    b = {k: np.concatenate([v, w]) for (k, v), w in zip(make_batch(1).items(), make_batch(2).values())}  # a batch of 2B
    mb_inds = np.random.default_rng(0).permutation(2 * B)[:B]
    m_opt, t_opt = P_MLX.make_optimizer(m_agent, args), P_TORCH.make_optimizer(t_agent, P_TORCH.Args())
    before = torch_params(t_agent)
    t_stats = P_TORCH.train_step(t_agent, t_opt, torch.tensor(mb_inds), [torch.tensor(b[k]) for k in KEYS], **hyper, world_size=1)
    state = [m_agent.state, m_opt.state]
    train = mx.compile(partial(P_MLX.train_step, m_agent, m_opt, **hyper, world_size=1), inputs=state, outputs=state)
    m_stats = train(mx.array(mb_inds), [mx.array(b[k]) for k in KEYS])
    mx.eval(m_stats, state)
    assert_same_weights(m_agent, t_agent, atol=1e-5, what="after one update")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    grads = torch_grads(t_agent)
    np.testing.assert_allclose(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())), 0.5, rtol=1e-4)
    assert_first_adam_step(before, torch_params(t_agent), grads, lr=2.5e-4, eps=1e-5)


# ---------------------------------------------------------------- gradient averaging across 2 processes

GRADS_PROGRAM = """
import os, sys
import numpy as np
sys.path.insert(0, {repo!r})
from benchmark.pairs import load_script
framework, out = sys.argv[1], sys.argv[2]
script = load_script("ppo_atari_multigpu", framework)
data = dict(np.load(os.path.join(out, "inputs.npz")))
weights = {{k[2:]: v for k, v in data.items() if k.startswith("w.")}}
if framework == "mlx":
    import mlx.core as mx, mlx.nn as nn
    from mlx.utils import tree_flatten
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    agent = script.Agent({n_actions})
    agent.load_weights([(k, mx.array(v)) for k, v in weights.items()])
else:
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    agent = script.Agent({n_actions})
    agent.load_state_dict({{k: torch.tensor(v) for k, v in weights.items()}})
batch = [data[f"{{k}}.{{rank}}"] for k in {keys!r}]
result = {{}}
for norm_adv in (True, False):
    kw = dict(clip_coef=0.1, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=True)
    if framework == "mlx":
        loss_and_grad = nn.value_and_grad(agent, lambda *b: script.ppo_loss(agent, *b, **kw))
        _, grads = loss_and_grad(*map(mx.array, batch))
        grads = dict(tree_flatten(script.average_gradients(grads, size)))
        mx.eval(grads)
        result |= {{f"{{norm_adv}}.{{k}}": np.array(v) for k, v in grads.items()}}
    else:
        agent.zero_grad()
        script.ppo_loss(agent, *map(torch.tensor, batch), **kw)[0].backward()
        script.average_gradients([p.grad for p in agent.parameters()], size)
        result |= {{f"{{norm_adv}}.{{k}}": p.grad.numpy().copy() for k, p in agent.named_parameters()}}
np.savez(os.path.join(out, f"grads_{{framework}}_{{rank}}.npz"), size=size, **result)
if framework == "torch":
    dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlx_ranks_function() -> str:
    """The bash function mlx_ranks exactly as docs/ppo_atari_multigpu.md gives it."""
    page = script_path(NAME, "mlx").parents[1] / "docs" / f"{NAME}.md"
    found = re.findall(r"^mlx_ranks\(\) \(.*?^\)$", page.read_text(), flags=re.M | re.S)
    assert len(found) == 1, f"{page} should define mlx_ranks once, found {len(found)}"
    return found[0]


def twin(launch: str) -> str:
    return "torch" if launch == "torch" else "mlx"


def launcher(launch, program, *args) -> list[str]:
    """The command that runs the python file `program` on 2 ranks on this machine, as the docs give it: `launch` is mlx
    (mlx.launch), mlx_ranks (the docs' bash function) or torch (torchrun); the ring's ports are chosen free, so that
    two tests may launch at once."""
    command = [sys.executable, str(program), *map(str, args)]
    if launch == "mlx":
        mlx_launch = shutil.which("mlx.launch", path=Path(sys.executable).parent) or "mlx.launch"  # this python's launcher
        return [mlx_launch, "-n", "2", "--starting-port", str(free_port()), "--", *command]
    if launch == "mlx_ranks":
        return ["bash", "-c", f"{mlx_ranks_function()}\nRING_PORT={free_port()} mlx_ranks 2 {shlex.join(command)}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what the torchrun command runs
    return [*torchrun, "--standalone", "--nproc_per_node", "2", *command[1:]]


def launch_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def run_launched(framework, program, *args, cwd, timeout=300) -> subprocess.CompletedProcess:
    cmd = launcher(framework, program, *args)
    return subprocess.run(cmd, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=timeout)


def union_gradients(module, framework, weights, batches, norm_adv):
    """In one process: the gradient of the mean of the per-minibatch PPO losses (each minibatch normalises its own
    advantages, as each rank does) or, without normalisation, of the loss on the concatenated minibatches."""
    agent = module.Agent(N_ACTIONS)
    kw = coefs(norm_adv)
    if framework == "mlx":
        agent.load_weights([(k, mx.array(v)) for k, v in weights.items()])
        to = mx.array
    else:
        agent.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        to = torch.tensor
    if norm_adv:
        parts = [[to(b[k]) for k in KEYS] for b in batches]
    else:
        parts = [[to(np.concatenate([b[k] for b in batches])) for k in KEYS]]

    def mean_loss(*flat):
        losses = [module.ppo_loss(agent, *flat[i * 6 : i * 6 + 6], **kw)[0] for i in range(len(parts))]
        return sum(losses) / len(losses)

    flat = [x for part in parts for x in part]
    if framework == "mlx":
        _, grads = nn.value_and_grad(agent, mean_loss)(*flat)
        return {k: np.array(v) for k, v in tree_flatten(grads)}
    mean_loss(*flat).backward()
    return {k: p.grad.numpy().copy() for k, p in agent.named_parameters()}


@pytest.fixture(scope="module")
def averaged_gradients(tmp_path_factory):
    """Each twin run on 2 ranks: the per-rank gradients on fixed weights and per-rank minibatches, averaged."""
    out = tmp_path_factory.mktemp("grads")
    torch.manual_seed(0)
    agent = P_TORCH.Agent(N_ACTIONS)
    with torch.no_grad():
        agent.actor.weight.normal_(0, 0.05)
    weights = {k: v.numpy().copy() for k, v in agent.state_dict().items()}
    batches = [make_batch(10, n=16), make_batch(11, n=16)]  # one minibatch per rank
    inputs = {f"w.{k}": v for k, v in weights.items()} | {f"{k}.{r}": b[k] for r, b in enumerate(batches) for k in KEYS}
    np.savez(out / "inputs.npz", **inputs)
    program = out / "grads.py"
    program.write_text(GRADS_PROGRAM.format(repo=str(script_path(NAME, "mlx").parents[1]), n_actions=N_ACTIONS, keys=KEYS))
    for framework in ("mlx", "torch"):
        check_ok(run_launched(framework, program, framework, out, cwd=out))
    results = {(fw, r): dict(np.load(out / f"grads_{fw}_{r}.npz")) for fw in ("mlx", "torch") for r in (0, 1)}
    return weights, batches, results


@pytest.mark.parametrize("norm_adv", [True, False], ids=["norm_adv", "no_norm_adv"])
@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_averaged_gradient_is_the_gradient_of_the_mean_loss_over_the_union(framework, norm_adv, averaged_gradients):
    weights, batches, results = averaged_gradients
    module = P_MLX if framework == "mlx" else P_TORCH
    expected = union_gradients(module, framework, weights, batches, norm_adv)
    for rank in (0, 1):
        got = results[framework, rank]
        assert int(got["size"]) == 2, "the launcher did not make a group of 2"
        for name, g in expected.items():
            np.testing.assert_allclose(got[f"{norm_adv}.{name}"], g, atol=1e-6, rtol=1e-5, err_msg=f"rank {rank} {name}")
            assert np.array_equal(got[f"{norm_adv}.{name}"], results[framework, 0][f"{norm_adv}.{name}"]), "ranks differ"
    # the ranks' own gradients differ, so the average is not one rank's gradient
    one_rank = union_gradients(module, framework, weights, batches[:1], norm_adv)
    assert not np.allclose(one_rank["critic.weight"], expected["critic.weight"], atol=1e-4)


def test_averaged_gradients_agree_across_frameworks(averaged_gradients):
    _, _, results = averaged_gradients
    mlx_grads, torch_grads = results["mlx", 0], results["torch", 0]
    assert sorted(mlx_grads) == sorted(torch_grads)
    for key in mlx_grads:
        np.testing.assert_allclose(mlx_grads[key], torch_grads[key], atol=1e-5, rtol=1e-5, err_msg=key)


# ---------------------------------------------------------------- whole runs on 2 ranks

# 16 hex digits each: ranks that share a pipe (mlx_ranks, torchrun) may write one line's newline after another's text
DIGEST = re.compile(r"rank (\d) of (\d): last rollout sha256 ([0-9a-f]{16}), parameters sha256 ([0-9a-f]{16})")


def digests(output: str) -> dict:
    """{rank: (rollout digest, parameter digest)} from the line every rank prints at the end."""
    return {int(r): (rollout, params) for r, size, rollout, params in DIGEST.findall(output)}


@pytest.mark.parametrize("launch", ["mlx", "mlx_ranks", "torch"])
def test_two_rank_run(launch, tmp_path):
    """Exit 0; one TensorBoard run (rank 0's) whose SPS steps count both ranks' steps up to the budget; after 8
    updates the same parameters on both ranks, but different rollouts; rank 0 alone saved and evaluated the model."""
    budget = 256  # 4 iterations of 2 ranks x 32 steps, 2 minibatches each: 8 averaged gradient steps
    flags = [*TINY, "--total-timesteps", budget, "--update-epochs", 1, "--save-model", "--eval-episodes", 1]
    proc = run_launched(launch, script_path(NAME, twin(launch)), *flags, cwd=tmp_path)
    check_ok(proc)
    (run_dir,) = run_dirs(tmp_path)
    scalars = read_scalars(run_dir)
    assert [s for s, _ in scalars["charts/SPS"]] == [64, 128, 192, 256]
    assert len(scalars["eval/episodic_return"]) == 1 and len(list(run_dir.glob("*.safetensors"))) == 1
    ranks = digests(proc.stdout)
    assert sorted(ranks) == [0, 1], proc.stdout[-3000:]
    assert ranks[0][1] == ranks[1][1], "the ranks hold different parameters"
    assert ranks[0][0] != ranks[1][0], "the ranks saw the same observations"


def test_one_rank_is_the_single_process_script(tmp_path):
    """Started alone (no launcher), the MLX script is ppo_atari_mlx with num_envs = local_num_envs: the same losses,
    returns and learning rates at the same steps (the torch twin's one-rank path is the same lines)."""
    args = ["--num-steps", "32", "--num-minibatches", "2", "--total-timesteps", "128"]
    logged = []
    for name, envs in ((NAME, "--local-num-envs"), ("ppo_atari", "--num-envs")):
        (tmp_path / name).mkdir()
        check_ok(run_script(name, "mlx", envs, "2", *args, cwd=tmp_path / name))
        scalars = read_scalars(run_dirs(tmp_path / name)[0])
        logged.append({k: v for k, v in scalars.items() if k.startswith(("losses/", "charts/episodic", "charts/learning"))})
    assert logged[0] and logged[0] == logged[1]


# ---------------------------------------------------------------- faults and Ctrl-C

FAULT_PROGRAM = """
import os, runpy, signal, sys, time
import gymnasium as gym
mode, at, stamp, script = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rank = int(os.environ.get("MLX_RANK", os.environ.get("RANK", "0")))
step, calls = gym.vector.SyncVectorEnv.step, [0]

def faulty_step(self, actions):  # rank 1 fails at its `at`-th env step
    calls[0] += 1
    if rank == 1 and calls[0] == at:
        open(stamp, "w").write(str(time.time()))
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("injected fault on rank 1")
    return step(self, actions)

gym.vector.SyncVectorEnv.step = faulty_step
sys.argv = [script, *sys.argv[5:]]
runpy.run_path(script, run_name="__main__")
"""
# mlx.launch exits 0 even when a rank fails: the docs give this line, which turns its "[WARN] Node with rank N ..."
# into the job's exit status
MLX_STATUS = '{launch} 2>&1 | tee -i launch.log && ! grep -q "Node with rank" launch.log'


def processes_in(cwd: Path) -> list[int]:
    """The processes (ranks) still running in `cwd`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd") == str(cwd):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize(
    "launch, mode", [(launch, mode) for launch in ("mlx", "torch") for mode in ("kill", "raise")] + [("mlx_ranks", "kill")]
)
def test_a_failing_rank_ends_the_whole_job(launch, mode, tmp_path):
    program = tmp_path / "fault.py"
    program.write_text(FAULT_PROGRAM)
    stamp = tmp_path / "fault_time"
    flags = [*TINY, "--total-timesteps", "100000"]  # far more than runs before the fault at rank 1's 40th env step
    command = launcher(launch, program, mode, 40, stamp, script_path(NAME, twin(launch)), *flags)
    if launch == "mlx":
        command = ["bash", "-c", MLX_STATUS.format(launch=shlex.join(command))]
    proc = subprocess.run(command, cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=400)
    ended, out = time.time(), proc.stdout + proc.stderr
    assert stamp.exists(), f"the fault was never injected\n{out[-3000:]}"
    assert ended - float(stamp.read_text()) < 60, f"the job took {ended - float(stamp.read_text()):.0f} s to end"
    assert proc.returncode != 0, out[-3000:]
    names_rank_1 = {"mlx": "Node with rank 1 ", "mlx_ranks": "rank 1 exited with code ", "torch": "rank      : 1 (local_rank: 1)"}
    assert names_rank_1[launch] in out, out[-3000:]
    assert not processes_in(tmp_path), "a rank is still running"


def stop_with_ctrl_c(launch, cwd, flags, budget) -> tuple[int, str, Path]:
    """2 ranks, and Ctrl-C (SIGINT to the launcher's process group, as a terminal sends it) once rank 0 wrote its first
    checkpoint: no rank is left and the last checkpoint is before the budget. Returns the exit status, the output and
    the run folder."""
    cmd = launcher(launch, script_path(NAME, twin(launch)), *flags, "--total-timesteps", budget)
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=launch_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not list(cwd.glob("runs/*/checkpoints/step_*/state.json")):
        assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert not processes_in(cwd), "a rank is still running"
    (run_dir,) = run_dirs(cwd)
    stopped = json.loads(sorted(run_dir.glob("checkpoints/step_*/state.json"))[-1].read_text())["global_step"]
    assert 64 <= stopped < budget, f"stopped at {stopped}\n{out[-3000:]}"
    return proc.returncode, out, run_dir


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_ctrl_c_on_the_launcher_stops_every_rank_and_the_run_resumes_on_two_ranks(framework, tmp_path):
    """Ctrl-C (SIGINT to the launcher's process group, as a terminal sends it) after the first checkpoint: every rank
    stops after the same iteration and rank 0 checkpoints it; --resume on 2 ranks goes on to the budget in the same run
    folder with the same parameters on both ranks."""
    budget, flags = 256, [*TINY, "--checkpoint-every", "64"]
    _, _, run_dir = stop_with_ctrl_c(framework, tmp_path, flags, budget)

    time.sleep(1.1)  # tensorboardX names event files by the second: the resumed run's must not overwrite the first's
    resume = run_launched(
        framework, script_path(NAME, framework), *flags, "--total-timesteps", budget, "--resume", run_dir, cwd=tmp_path
    )
    check_ok(resume)
    assert run_dirs(tmp_path) == [run_dir]
    final = json.loads(sorted(run_dir.glob("checkpoints/step_*/state.json"))[-1].read_text())
    assert final["global_step"] == budget and final["args"]["world_size"] == 2
    ranks = digests(resume.stdout)
    assert sorted(ranks) == [0, 1] and ranks[0][1] == ranks[1][1], resume.stdout[-3000:]


def test_ctrl_c_under_mlx_ranks_stops_every_rank_after_the_same_iteration(tmp_path):
    """The docs' mlx_ranks: Ctrl-C reaches each rank once, every rank stops after the same iteration (the same
    parameters on both), rank 0 checkpoints it and the function returns 0."""
    status, out, _ = stop_with_ctrl_c("mlx_ranks", tmp_path, [*TINY, "--checkpoint-every", "64"], 256)
    ranks = digests(out)
    assert status == 0 and sorted(ranks) == [0, 1] and ranks[0][1] == ranks[1][1], out[-3000:]


def test_bad_launch_input():
    """One line: a budget under one rollout of all ranks, device ids that are not one per rank, an unknown backend."""
    m_args = P_MLX.Args(total_timesteps=400, local_num_envs=2, num_steps=128)
    m_args.world_size = 2
    with pytest.raises(SystemExit, match=r"less than one rollout of all ranks \(2 x 256 steps\)"):
        P_MLX.check_args(m_args, "ppo_atari_multigpu_mlx.py")
    for kwargs, message in (
        (dict(device_ids=[0]), "--device-ids must be one id per rank"),
        (dict(backend="ucc"), "--backend must be gloo, nccl or mpi"),
    ):
        t_args = P_TORCH.Args(**kwargs)
        t_args.world_size = 2
        with pytest.raises(SystemExit, match=message):
            P_TORCH.check_args(t_args, "ppo_atari_multigpu_torch.py")
