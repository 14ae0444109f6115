"""HalfCheetah's two gaits: how a ppo_continuous_action run (either twin) moves at its newest checkpoint.

PPO on HalfCheetah often settles on running on its back (about 1500 at 1M steps) and now and then learns to run
upright (3000 and more), so a seed's final return says first which of the two it found. This rolls a checkpoint's
policy out (numpy only, the mean action, the checkpoint's observation statistics) and prints the return, the forward
speed and the share of steps with the torso upside down.

Usage: python -m benchmark.halfcheetah_gait RUN_DIR [RUN_DIR ...] [--episodes 3]
RUN_DIR: the folder a run was started in (its runs/<run_name>/checkpoints/step_*), a run folder, or one checkpoint.
"""

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import safetensors.numpy


def newest_checkpoint(path) -> Path:
    path = Path(path)
    if (path / "arrays.safetensors").is_file():
        return path
    found = [p.parent for p in path.glob("**/checkpoints/step_*/arrays.safetensors")]
    if not found:
        raise SystemExit(f"halfcheetah_gait: no checkpoint under {path}")
    return max(found, key=lambda p: p.name)  # step_<zero-padded global step>: the newest, whatever run folder holds it


def mean_action(arrays, obs):
    """The actor's mean for a raw observation: normalised with the saved statistics and clipped to +-10, as the
    scripts' NormalizeObservation and TransformObservation wrappers do, then the tanh MLP."""
    x = (obs - arrays["envs.0.obs_rms.mean"]) / np.sqrt(arrays["envs.0.obs_rms.var"] + 1e-8)
    x = np.clip(x, -10, 10)
    for i in (0, 2):
        x = np.tanh(x @ arrays[f"agent.actor_mean.{i}.weight"].T + arrays[f"agent.actor_mean.{i}.bias"])
    return x @ arrays["agent.actor_mean.4.weight"].T + arrays["agent.actor_mean.4.bias"]


def gait(arrays, episodes=3, seed=100) -> dict:
    """Mean over `episodes` of the return, the forward speed (m/s) and the share of steps upside down."""
    env = gym.make("HalfCheetah-v5")
    returns, speeds, upside_down = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, pitch, speed, done = 0.0, [], [], False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(np.clip(mean_action(arrays, obs), -1, 1))
            total, done = total + reward, terminated or truncated
            qpos, qvel = env.unwrapped.data.qpos, env.unwrapped.data.qvel
            pitch.append(qpos[2])  # the torso's rotation about the y axis; 0 is upright
            speed.append(qvel[0])
        returns.append(total)
        speeds.append(np.mean(speed))
        upside_down.append(np.mean(np.cos(pitch) < 0))
    env.close()
    return {"return": float(np.mean(returns)), "speed": float(np.mean(speeds)), "upside_down": float(np.mean(upside_down))}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmark.halfcheetah_gait", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--episodes", type=int, default=3)
    args = p.parse_args(argv)
    print("| run | checkpoint | return | forward speed (m/s) | upside down |\n|---|---|---|---|---|")
    for run in args.runs:
        checkpoint = newest_checkpoint(run)
        g = gait(safetensors.numpy.load_file(checkpoint / "arrays.safetensors"), args.episodes)
        print(f"| {Path(run).name} | {checkpoint.name} | {g['return']:.0f} | {g['speed']:.2f} | {g['upside_down']:.0%} |")


if __name__ == "__main__":
    main()
