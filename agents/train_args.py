"""What a user types to train: the flags of ``train_rl.py``.

`TrainArgs` is read by tyro (every field a ``--flag``, its docstring the help).
A flag left at ``None`` takes the task's preset (`agents.presets`), so
``python train_rl.py --env corridor --length 1000`` gets settings tuned for
that length and any flag overrides them. `agents.resolve` turns the flags into
the run's `TrainConfig` (what ``config.json`` holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from agents.cli import task_flags

POLICY_FLAGS = (
    "d_model", "num_layers", "num_heads", "max_span", "ramp_length", "ramp_growth",
    "span_init", "span_loss_coef", "memory_size", "gating", "egocentric", "reconstruction_coef",
)  # fmt: skip
"""The flags that set the policy's config (`policies.config`), each for the cores that have it."""

# Flags whose unset value means "the task's preset" (or "off"), shown as such in --help.
_PRESET = "(default: preset)"
PresetInt = Annotated[int | None, tyro.conf.arg(metavar="INT", help_behavior_hint=_PRESET)]
PresetFloat = Annotated[float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint=_PRESET)]
PresetBool = Annotated[
    bool | None, tyro.conf.arg(metavar="{True,False}", help_behavior_hint=_PRESET)
]
ThreadCount = Annotated[
    int | None, tyro.conf.arg(metavar="INT", help_behavior_hint="(default: torch's choice)")
]


TaskFlags = task_flags(_PRESET)
"""The task parameters as flags (``--length``, ``--num-rooms``, ...), from the tasks' config
dataclasses."""


@dataclass
class TrainArgs(TaskFlags):  # type: ignore[misc, valid-type]
    """Train a memory agent: `python train_rl.py --env corridor --length 1000`."""

    # --- the task (and the task parameters above) ---
    env: str = "corridor"
    """Task: corridor, portal, instruction, or a registered gymnasium id with a discrete action
    space and minigrid-style or flat-vector observations (e.g. MiniGrid-MemoryS13Random-v0)."""
    # --- the agent ---
    policy: Literal["expire_span", "trxl", "lstm"] = "expire_span"
    """Memory core."""
    algo: Literal["ppo", "impala"] = "ppo"
    """Learner: PPO, or the IMPALA-style actor-critic with V-trace targets."""
    d_model: PresetInt = None
    """Model width D."""
    num_layers: PresetInt = None
    """Layers of the memory core."""
    num_heads: PresetInt = None
    """Attention heads (transformer cores)."""
    max_span: PresetInt = None
    """Expire-Span L_max (corridor preset: 3 x length + 16)."""
    ramp_length: PresetInt = None
    """Expire-Span ramp R."""
    ramp_growth: PresetFloat = None
    """Expire-Span ramp growth rho: the ramp is R + rho x span (0: a fixed R)."""
    span_init: PresetFloat = None
    """Expire-Span initial span as a fraction p of L_max."""
    span_loss_coef: PresetFloat = None
    """Expire-Span span loss coefficient alpha."""
    memory_size: PresetInt = None
    """Transformer-XL window M."""
    gating: PresetBool = None
    """GTrXL-style gating in the transformer blocks."""
    egocentric: PresetBool = None
    """Turn the view to the agent's heading before embedding it, so that the cell in front of
    the agent is always the same cell (off in every preset)."""
    reconstruction_coef: PresetFloat = None
    """Coefficient of an auxiliary loss that reconstructs each step's observation from the
    memory core's output, so that memories hold what was seen (0: off)."""
    forward_bias: PresetFloat = None
    """Initial logit bias of the 'forward' action (helps a fresh agent reach far rewards)."""
    last_action_reward: PresetBool = None
    """Show the agent its previous action and reward as two more observation fields,
    last_action (0 at an episode's start, a + 1 after action a) and last_reward. Portal
    preset: on (which portal was taken, and whether the last room's led on, are not visible
    otherwise); off elsewhere."""

    # --- the learner ---
    num_envs: PresetInt = None
    """Parallel environments B, all processes together: under torchrun each of the N
    processes steps B / N of them (a multiple of N x --num-minibatches)."""
    num_steps: PresetInt = None
    """Rollout length T per update."""
    total_steps: PresetInt = None
    """Env steps to train for (all envs together)."""
    learning_rate: PresetFloat = None
    """Adam learning rate (annealed linearly to 0 unless --anneal-lr False)."""
    anneal_lr: PresetBool = None
    """Anneal the learning rate linearly to 0 over --total-steps (presets: on, but off for
    Instruction, which stops at its target instead)."""
    span_lr_scale: PresetFloat = None
    """Learning-rate multiplier of the span predictors."""
    gamma: PresetFloat = None
    """Discount factor."""
    gae_lambda: PresetFloat = None
    """GAE lambda (PPO)."""
    update_epochs: PresetInt = None
    """Passes over each rollout."""
    num_minibatches: PresetInt = None
    """Minibatches per epoch (whole env columns each)."""
    chunk_length: PresetInt = None
    """Sequence chunk length inside a minibatch; each chunk starts from the memory state stored
    at its start during the rollout (must divide num_steps)."""
    clip_coef: PresetFloat = None
    """PPO ratio clipping."""
    ent_coef: PresetFloat = None
    """Entropy bonus coefficient (with a curriculum: at its first stage)."""
    ent_coef_final: PresetFloat = None
    """With a curriculum: the entropy coefficient once the full task is reached; between
    stages it moves geometrically with the stage (corridor preset: 0.03 at the first stage,
    0.01 at the full length). Unset: --ent-coef throughout."""
    vf_coef: PresetFloat = None
    """Value loss coefficient."""
    max_grad_norm: PresetFloat = None
    """Gradient clipping (global norm)."""
    adv_std_floor: PresetFloat = None
    """PPO: advantages are divided by max(std, this) (avoids a blow-up once solved)."""
    rho_clip: PresetFloat = None
    """IMPALA: V-trace rho-bar."""
    c_clip: PresetFloat = None
    """IMPALA: V-trace c-bar."""
    curriculum_start: PresetInt = None
    """A curriculum's first stage. Corridor: episodes start this long (at most: with
    --min-length they are drawn up to it); whenever a logging interval's success rate
    reaches --curriculum-success the longest length doubles, up to --length (evaluation is
    always at the full length). Preset: 10 for corridors of 20 cells or more, else none;
    --curriculum-start LENGTH turns it off. Instruction: a room of this size with 2 balls
    first; its size doubles the same way up to --size, where the task itself (--num-objects
    balls) begins. Preset: 3 for rooms of 5 or more; --curriculum-start SIZE turns it off."""
    curriculum_success: PresetFloat = None
    """Success rate over a logging interval that moves the curriculum on (instruction: the
    share of episodes whose every resolved instruction was carried out)."""
    curriculum_full_fraction: PresetFloat = None
    """Corridor curriculum with random lengths: once the full length is reached, this share
    of the episodes has exactly the full length (the rest stay random)."""
    span_lr_scale_final: PresetFloat = None
    """With a length curriculum: the span learning-rate multiplier once the full length is
    reached (before: --span-lr-scale)."""
    bootstrap_truncated: PresetBool = None
    """Bootstrap a time-limited episode from its value (True), or count the time-out as the
    episode's end with nothing more to come (False: the corridor preset, where a time-out is
    a failure and bootstrapping let agents idle at the junction)."""

    # --- the run ---
    seed: int = 1
    """Random seed (one seed gives the same run on CPU)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where envs, policy and learner run (auto: cuda when available)."""
    run_dir: str | None = None
    """Run directory (default runs/<env>-<policy>-<algo>-s<seed>-<time>)."""
    resume: str | None = None
    """Resume the run in this directory from its latest checkpoint (other flags must agree)."""
    log_interval: PresetInt = None
    """Updates between metric rows."""
    checkpoint_interval: PresetInt = None
    """Updates between checkpoints."""
    keep_checkpoints: int = 3
    """Numbered checkpoints kept beside latest.pt."""
    target_success: PresetFloat = None
    """Stop once an interval's success rate reaches this on the full task (after the
    curriculum's last doubling); 0 trains for all of --total-steps. Corridor preset: 0.99,
    unless --span-lr-scale-final or --curriculum-full-fraction asks for training past it."""
    target_alive: float | None = None
    """With --target-success: stop only once the interval's mean alive memories per layer is
    also at most this many (default and 0: no memory condition)."""
    confirm_episodes: PresetInt = None
    """With --target-success: once an interval meets the targets, play this many greedy
    episodes of the full task and stop only if they meet them too (0: the interval alone
    decides); checked at most once every 5 intervals. Also the episodes that score
    --target-oracle-share."""
    target_oracle_share: PresetFloat = None
    """Stop once --confirm-episodes greedy episodes of the full task (default 100) score at
    least this share of the task's scripted oracle on the same episodes (Portal: goals;
    Instruction: instructions carried out; corridor: success), checked every 5 intervals
    on the full task; 0: off. Instruction preset: 0.93."""
    threads: ThreadCount = None
    """CPU threads for torch (1 is often fastest on a small shared machine)."""
