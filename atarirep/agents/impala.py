"""IMPALA (V-trace) on Atari, single- and multi-task, in one file that reads top to bottom (torchbeast's
`monobeast` design, docs/protocols.md 4).

Actor processes play the games and write unrolls into shared-memory buffers; the learner trains on batches
of them with V-trace (atarirep.agents.vtrace). The reference settings (torchbeast's defaults, and the
torchbeast PopArt runs'): 48 actors, unrolls of 80 steps, 8 unrolls a learner step, RMSprop lr 4.8e-4
(alpha 0.99, eps 0.01, no momentum) decaying linearly to 0, gradient norm clipped at 40, discount 0.99,
rho-bar = c-bar = 1; losses summed over time and batch: the policy gradient with V-trace advantages,
baseline_cost (0.5) x 0.5 x the baseline's squared error (torchbeast's `compute_baseline_loss`),
entropy_cost (0.0006) x the negative entropy. (The IMPALA paper: entropy 0.01, batches of 32.) Rewards are
clipped to their sign by the protocol (AgentEnvs, as for PPO) except under PopArt, whose actors see the
raw rewards (`reward_clipping`); a life lost ends a training episode under `classic`, and the frame cap
counts as an episode's end (as torchbeast does).

The network (`last_action_reward`, as monobeast's AtariNet) reads beside the torso's features the last
reward clamped to [-1, 1] and a one-hot of the last action. Each actor starts with zeros for both (monobeast's
`Environment.initial`) and then always passes the step before's, across an episode's end too (monobeast's
`Environment.step` resets the game and returns the ending step's reward and action with the new frame).
Checkpoints record `acts_greedily` (`greedy_evaluation`): evaluation plays the argmax of the policy, as
torchbeast's test mode does.

    actor i (a process)                          shared memory                  learner (this process)
    ---------------------                        -------------                  ----------------------
    index <- free_queue                          buffers[index]:                B indices <- full_queue
    copy the learner's weights                     obs      (T+1, 4, 84, 84)    copy the B unrolls out,
    play T steps of its game (one env),            last action, reward (T+1)    give the indices back
    write them into buffers[index]                 actions, rewards, dones,     V-trace, losses, RMSprop
    full_queue <- index                            behaviour logits (T, ...)    weights -> shared weights
                                                   task id

Multi-task (several games): actor i plays games[i % len(games)]; the policy is shared. With `popart` (the
default; "multi-task PopArt") the value layer has one PopArt-normalised output per game
(atarirep.agents.popart) and the actors see unclipped rewards: V-trace runs in the reward's scale, the
baseline loss and the policy gradient's advantages in the normalised one, and each game's statistics move
after every learner step by `popart_statistics`' rule. They are buffers of the network, so checkpoints and
the resume file keep them. Without it ("multi-task (clipped)", the reference's ablation) one value output is
shared by every game and rewards are clipped. Every game must have the same
action count (the reference set AirRaid, Carnival, DemonAttack, NameThisGame, Pong, SpaceInvaders has 6),
unless `full_action_space` has every game play ALE's 18 actions (a game ignores those it lacks).

What this adds to the single file, as atarirep.agents.ppo does: a checkpoint every `checkpoint_every` agent
steps (the steps the learner has trained on) in the published format and layout, logs through dvclive, and
resume from the last checkpoint (weights, optimizer, PopArt statistics, step). Resume is not exact, unlike
PPO's: actors run asynchronously, so which unrolls form a batch depends on timing; a resumed run starts new
games. An actor that dies (an exception, or killed) stops the run within about a second with a UserError
naming it; the others are stopped and the run resumes from its last checkpoint. Actors whose learner was
killed outright notice within a second or two and exit.

A single-game run with the Nature CNN and `last_action_reward: false` has exactly the state_dict of
atarirep.agents.network.ActorCritic, so its checkpoints load as PPO's do; every checkpoint this file writes
(through `checkpoints.save`) loads with `checkpoints.load_network` and goes through evaluate_agent, saliency and
probe_checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from atarirep import seeds
from atarirep.agents import acting, checkpoints, runner
from atarirep.agents.network import IMPALANet
from atarirep.agents.popart import STATISTICS, PopArt
from atarirep.agents.vector_env import AGENT_FRAME, STACK, AgentEnvs
from atarirep.agents.vtrace import action_log_probs, log_rhos, vtrace
from atarirep.games import Protocol, get_protocol
from atarirep.plumbing import devices, params
from atarirep.plumbing.errors import UserError

RESUME_FORMAT = "atarirep-impala-resume/1"
ARCHITECTURES = ("nature", "impala")
REWARD_CLIPPING = ("auto", "sign", "none")  # auto: none under PopArt (the reference's PopArt run), else sign
POLL_S = 0.5  # how often the learner, waiting for unrolls, checks that every actor is alive
STALL_S = 600.0  # no unroll from any living actor for this long: something is wrong; stop


@dataclass(frozen=True)
class IMPALAConfig:
    total_steps: int = 50_000_000  # agent steps the learner trains on (frames = 4x); 300M multi-task
    unroll_length: int = 80  # T: steps of one actor per unroll
    batch_size: int = 8  # unrolls per learner step (torchbeast; the IMPALA paper: 32)
    num_actors: int = 48
    num_buffers: int = 0  # shared unroll buffers; 0: max(2 x num_actors, batch_size)
    lr: float = 4.8e-4
    anneal_lr: bool = True  # linearly to 0 over total_steps
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.01
    rmsprop_momentum: float = 0.0
    max_grad_norm: float = 40.0
    discount: float = 0.99
    baseline_cost: float = 0.5
    entropy_cost: float = 0.0006  # torchbeast (the IMPALA paper: 0.01)
    rho_bar: float = 1.0  # clips the importance weights of the TD errors (and the policy gradient's)
    c_bar: float = 1.0  # clips the traces
    protocol: str = "classic"
    architecture: str = "nature"  # nature (NatureCNN, 512 features) or impala (ImpalaCNN, 256)
    checkpoint_every: int = 1_000_000
    games: tuple[str, ...] = ()  # a multi-task run's games (the stage passes them to train); empty: one game
    popart: bool = True  # multi-task: PopArt-normalised values (a single game has a plain value head)
    popart_beta: float = 4e-4  # torchbeast's effective beta (Hessel et al.: 3e-4)
    popart_statistics: str = "torchbeast"  # or second_moment (Hessel et al.): atarirep.agents.popart
    reward_clipping: str = "auto"  # auto: unclipped under PopArt, else sign; sign; none (PopArt only)
    last_action_reward: bool = True  # the heads also read the last reward and action (monobeast's AtariNet)
    greedy_evaluation: bool = True  # checkpoints play the policy's argmax (torchbeast's test mode); false: sample
    full_action_space: bool = False  # every game plays ALE's 18 actions: games of different action sets can mix

    @property
    def steps_per_update(self) -> int:
        return self.unroll_length * self.batch_size

    @property
    def iterations(self) -> int:
        return self.total_steps // self.steps_per_update

    @property
    def buffers(self) -> int:
        return self.num_buffers or max(2 * self.num_actors, self.batch_size)

    def check(self, where: str = "train_agent.impala") -> None:
        """Every range of the config, each checked here once: UserError "`where`.key must be ...; set it to ..."."""
        get_protocol(self.protocol)
        for name in ("total_steps", "unroll_length", "batch_size", "num_actors", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise runner.out_of_range(self, where, name, "at least 1")
        if self.num_buffers < 0 or (self.num_buffers and self.num_buffers < max(self.batch_size, self.num_actors)):
            raise runner.out_of_range(
                self,
                where,
                "num_buffers",
                f"0 or at least batch_size ({self.batch_size}) and num_actors ({self.num_actors})",
                "0 (max(2 x num_actors, batch_size))",
            )
        if self.iterations < 1:
            raise runner.out_of_range(
                self,
                where,
                "total_steps",
                f"at least one learner step (unroll_length x batch_size = {self.steps_per_update})",
            )
        for name, choices in (
            ("architecture", ARCHITECTURES),
            ("popart_statistics", STATISTICS),
            ("reward_clipping", REWARD_CLIPPING),
        ):
            if getattr(self, name) not in choices:
                raise runner.out_of_range(self, where, name, f"one of {', '.join(choices)}")
        for name, rule, ok in (
            ("lr", "in (0, 1)", 0 < self.lr < 1),
            ("discount", "in (0, 1]", 0 < self.discount <= 1),
            ("popart_beta", "in [0, 1]", 0 <= self.popart_beta <= 1),
            ("rho_bar", "positive", self.rho_bar > 0),
            ("c_bar", "positive", self.c_bar > 0),
            ("rmsprop_alpha", "in [0, 1)", 0 <= self.rmsprop_alpha < 1),
            ("rmsprop_eps", "positive", self.rmsprop_eps > 0),
            ("rmsprop_momentum", "at least 0", self.rmsprop_momentum >= 0),
            ("max_grad_norm", "positive", self.max_grad_norm > 0),
            ("baseline_cost", "at least 0", self.baseline_cost >= 0),
            ("entropy_cost", "at least 0", self.entropy_cost >= 0),
        ):
            if not ok:
                raise runner.out_of_range(self, where, name, rule)
        self.clips_rewards(len(self.games) or 1, where)  # no games: a single-game run's config

    def uses_popart(self, num_games: int) -> bool:
        """Whether a run over `num_games` games has PopArt values (several games and `popart`)."""
        return self.popart and num_games > 1

    def clips_rewards(self, num_games: int, where: str = "train_agent.impala") -> bool:
        """Whether the actors of a run over `num_games` games see sign-clipped rewards; UserError for unclipped
        rewards without PopArt (a plain value output has no scale to learn them in)."""
        if self.reward_clipping == "none" and not self.uses_popart(num_games):
            run = "a single-game run" if num_games < 2 else "a multi-task run without PopArt (algo IMPALA)"
            raise UserError(
                f"{where}.reward_clipping is 'none' in {run}: unclipped rewards need PopArt's "
                f"normalised values (multitask.algo IMPALA_PopArt); use auto or sign"
            )
        return self.reward_clipping == "sign" or (self.reward_clipping == "auto" and not self.uses_popart(num_games))

    def training_protocol(self, num_games: int) -> Protocol:
        """The protocol the actors play: `protocol`, with its reward clipping as `clips_rewards` says."""
        return dataclasses.replace(get_protocol(self.protocol), clip_rewards=self.clips_rewards(num_games))

    def checkpoint_iterations(self) -> list[int]:
        """The learner steps after which a checkpoint is written: the first to reach each multiple of
        `checkpoint_every`, and always the last (as PPO's)."""
        return runner.checkpoint_iterations(self.total_steps, self.checkpoint_every, self.steps_per_update)


def config_from(mapping: dict, where: str = "train_agent.impala") -> IMPALAConfig:
    """An IMPALAConfig from params (`where`: train_agent.impala); UserError for an unknown key or a value of the
    wrong type."""
    config = params.config_from(IMPALAConfig, mapping, where)
    config.check(where)
    return config


def multitask_config(
    base: dict, overrides: dict, *, algo: str, protocol: str, games: list[str], full_action_space: bool
) -> IMPALAConfig:
    """train_multitask's config: train_agent.impala (`base`) with multitask.impala's keys (`overrides`) over it,
    PopArt when `algo` is IMPALA_PopArt (IMPALA: one value output shared by the games and clipped rewards, the
    reference's "multi-task (clipped)" ablation). Checks multitask's own keys here, the rest in IMPALAConfig.check."""
    if algo not in checkpoints.MULTITASK_ALGORITHMS:
        raise UserError(
            f"multitask.algo must be one of {', '.join(checkpoints.MULTITASK_ALGORITHMS)}, not {algo!r}; set it "
            "to IMPALA_PopArt"
        )
    if len(games) < 2:
        raise UserError(
            f"multitask.games must list at least two games, not {list(games)}; set it to games of one action count "
            "such as [Pong, SpaceInvaders] (one game: train_agent with algo IMPALA)"
        )
    fixed = {
        "protocol": protocol,
        "games": list(games),
        "popart": algo == "IMPALA_PopArt",
        "full_action_space": full_action_space,
    }
    clash = sorted(set(overrides) & set(fixed))
    if clash:
        raise UserError(
            f"params.yaml multitask.impala sets {', '.join(clash)}, which multitask sets itself "
            "(algo, games, full_action_space; the protocol is train_agent.protocol); drop them"
        )
    return config_from({**base, **overrides, **fixed}, where="multitask.impala (over train_agent.impala)")


# ----------------------------------------------------------------------------------------------------------
# Actors: each a process with one env, writing unrolls into the shared buffers.


def make_buffers(config: IMPALAConfig, num_actions: int) -> dict[str, torch.Tensor]:
    """The shared unroll buffers, one tensor per field with the buffer index first.

    obs[i, t] is the stack the actor acted on at step t (obs[i, T] the one after the last step, whose
    value bootstraps the unroll), last_action[i, t] and last_reward[i, t] (clamped to [-1, 1]) what the
    network read beside it (those of the step before; zeros before an actor's first step); actions,
    behaviour logits, rewards (clipped or not, as the run trains) and dones[i, t] (step t ended an episode: a
    life lost, a game over, or the frame cap) are step t's. game_over/game_return record each whole game that
    ended, with its raw (unclipped) return, for the logs."""
    n, t = config.buffers, config.unroll_length
    specs = {
        "obs": ((n, t + 1, STACK, *AGENT_FRAME), torch.uint8),
        "actions": ((n, t), torch.int64),
        "last_action": ((n, t + 1), torch.int64),
        "last_reward": ((n, t + 1), torch.float32),
        "logits": ((n, t, num_actions), torch.float32),
        "rewards": ((n, t), torch.float32),
        "dones": ((n, t), torch.bool),
        "game_over": ((n, t), torch.bool),
        "game_return": ((n, t), torch.float64),
        "task": ((n,), torch.int64),
    }
    return {key: torch.zeros(shape, dtype=dtype).share_memory_() for key, (shape, dtype) in specs.items()}


def act(
    actor: int,
    game: str,
    task: int,
    config: IMPALAConfig,
    protocol: Protocol,
    seed: int,
    spec: dict,
    shared_state: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    free_queue,
    full_queue,
    errors,
    learner_pid: int,
    fault: tuple[int, int, str] | None = None,
) -> None:
    """One actor process: fill free buffers with unrolls of `game` under `protocol` (the run's, its rewards
    clipped or not) until the learner stops it.

    `seed` seeds its games' no-ops and its action draws (Gumbel-max from a numpy generator, as PPO). An
    exception is printed, sent to the learner on `errors` and ends the process at once with exit code 1.
    `fault` = (actor, unrolls, "raise" or "kill") makes that actor fail after that many unrolls (tests)."""
    try:
        torch.set_num_threads(1)  # many actors share the cores; one forward pass of one stack each step
        envs = AgentEnvs(game, 1, protocol, training=True, full_action_space=config.full_action_space)
        model = devices.place(IMPALANet.from_spec(spec), layout=torch.channels_last)
        rng = np.random.default_rng(seed)
        obs = torch.from_numpy(envs.reset(int(rng.integers(2**31 - 2**16))))
        last_action, last_reward = torch.zeros(1, dtype=torch.int64), torch.zeros(1)  # monobeast's initial()
        unrolls = 0
        while True:
            index = _next_free(free_queue, learner_pid)
            if index is None:
                return
            model.load_state_dict(shared_state)  # the learner's latest weights
            buffers["task"][index] = task
            buffers["obs"][index, 0] = obs[0]
            buffers["last_action"][index, 0], buffers["last_reward"][index, 0] = last_action[0], last_reward[0]
            for t in range(config.unroll_length):
                with torch.no_grad():
                    logits = model.heads(obs, last_action, last_reward)[0][0].float()
                action = int(acting.gumbel_max(logits.double().numpy(), rng))
                step = envs.step(np.array([action]))
                obs = torch.from_numpy(step.obs)
                # What the network reads at the next step, across an episode's end too (as monobeast).
                last_action = torch.tensor([action])
                last_reward = torch.tensor([float(step.reward[0])]).clamp(-1.0, 1.0)
                buffers["last_action"][index, t + 1], buffers["last_reward"][index, t + 1] = action, last_reward[0]
                buffers["actions"][index, t] = action
                buffers["logits"][index, t] = logits
                buffers["rewards"][index, t] = float(step.reward[0])
                buffers["dones"][index, t] = bool(step.terminated[0] or step.truncated[0])
                buffers["game_over"][index, t] = bool(step.finished_returns)
                buffers["game_return"][index, t] = step.finished_returns[0] if step.finished_returns else 0.0
                buffers["obs"][index, t + 1] = obs[0]
            full_queue.put(index)
            unrolls += 1
            if fault is not None and fault[0] == actor and unrolls >= fault[1]:
                if fault[2] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault after {unrolls} unrolls at time {time.time():.3f}")
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the learner reports it
        return
    except BaseException as err:
        traceback.print_exc()
        errors.put((actor, f"{type(err).__name__}: {err}"))
        errors.close()
        errors.join_thread()  # the message is in the pipe; now exit at once: the interpreter's teardown
        os._exit(1)  # (torch, the emulator) takes seconds, and the learner waits for the exit code


def _next_free(free_queue, learner_pid: int) -> int | None:
    """The next free buffer's index; None when the learner is gone (killed: it could not stop us)."""
    while True:
        try:
            return free_queue.get(timeout=1.0)
        except queue.Empty:
            try:
                os.kill(learner_pid, 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                return None


class Actors:
    """The actor processes, started by `start` and always stopped by `stop`; `check` raises a UserError
    naming an actor that has died."""

    def __init__(
        self,
        games: list[str],
        config: IMPALAConfig,
        seed: tuple[int, ...],
        network: IMPALANet,
        buffers: dict[str, torch.Tensor],
        fault: tuple[int, int, str] | None = None,
    ):
        protocol = config.training_protocol(len(games))
        # forkserver: actors are forked from a clean server process that has imported this module once (not
        # from the learner, whose OpenMP threads, ALE thread pool or CUDA context a fork would inherit), so
        # they start in well under a second where spawn's fresh interpreters took seconds each. Shared tensors
        # travel to them as file descriptors.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["atarirep.agents.impala"])
        self.free_queue, self.full_queue, self.errors = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.shared_state = {k: v.detach().to("cpu").clone().share_memory_() for k, v in network.state_dict().items()}
        self.games = [games[i % len(games)] for i in range(config.num_actors)]
        self.processes = [
            ctx.Process(
                target=act,
                name=f"impala-actor-{i}",
                daemon=True,
                args=(
                    i,
                    self.games[i],
                    i % len(games),
                    config,
                    protocol,
                    seeds.impala_actor(seed, i),
                    network.spec,
                    self.shared_state,
                    buffers,
                    self.free_queue,
                    self.full_queue,
                    self.errors,
                    os.getpid(),
                    fault,
                ),
            )
            for i in range(config.num_actors)
        ]
        self.num_buffers = config.buffers
        self.reported: dict[int, str] = {}

    def start(self) -> None:
        for index in range(self.num_buffers):
            self.free_queue.put(index)
        for process in self.processes:
            process.start()

    def publish(self, network: IMPALANet) -> None:
        """Copy the learner's weights where the actors read them (each at the start of its next unroll)."""
        with torch.no_grad():
            for key, value in network.state_dict().items():
                self.shared_state[key].copy_(value)

    def check(self) -> None:
        for i, process in enumerate(self.processes):
            if process.exitcode is not None:
                self._collect_errors(i, wait=1.0)
                code = process.exitcode
                cause = self.reported.get(i) or (
                    f"killed by signal {-code} ({_signal_name(-code)}; out of memory?)"
                    if code < 0
                    else "no exception reported"
                )
                raise UserError(
                    f"IMPALA actor {i} ({self.games[i]}) died with exit code {code}: {cause}; the other "
                    f"actors were stopped; run the stage again to resume from the last checkpoint"
                )

    def _collect_errors(self, actor: int, wait: float) -> None:
        """Read the actors' reported exceptions until `actor`'s is in (it is sent before the exit), or `wait` s."""
        deadline = time.monotonic() + wait
        while actor not in self.reported and time.monotonic() < deadline:
            try:
                reporter, message = self.errors.get(timeout=max(0.0, deadline - time.monotonic()))
                self.reported.setdefault(reporter, message)
            except queue.Empty:
                return

    def next_full(self) -> int:
        """The index of the next full buffer, checking every POLL_S that every actor is alive."""
        waited = 0.0
        while True:
            self.check()
            try:
                return self.full_queue.get(timeout=POLL_S)
            except queue.Empty:
                waited += POLL_S
                if waited >= STALL_S:
                    raise UserError(
                        f"no IMPALA actor delivered an unroll in {STALL_S:.0f} s though all are alive; "
                        "run the stage again to resume from the last checkpoint"
                    ) from None

    def release(self, indices: list[int]) -> None:
        for index in indices:
            self.free_queue.put(index)

    def stop(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                process.terminate()
        for process in self.processes:
            if process.pid is not None:
                process.join(timeout=5)
                if process.exitcode is None:
                    process.kill()
                    process.join(timeout=5)
        for q in (self.free_queue, self.full_queue, self.errors):
            q.cancel_join_thread()  # never block the learner's exit on a pipe no one reads any more
            q.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "a real-time signal"


# ----------------------------------------------------------------------------------------------------------
# The learner.


def train(
    games: str | list[str],
    seed: int,
    out_dir: str | os.PathLike,
    log_dir: str | os.PathLike,
    config: IMPALAConfig,
    *,
    study_seed: int = 0,
    device: str = "auto",
    algo: str = "IMPALA",
    progress: bool = True,
    _fault: tuple[int, int, str] | None = None,
) -> Path:
    """Train IMPALA run `seed` on `games` (one name, or several for a multi-task run); checkpoints go to
    out_dir (model_STEP.gz), dvclive logs to log_dir, both written whole at the end. Until then everything
    lives in a hidden folder beside out_dir, from which a killed or failed run resumes at its last checkpoint.

    Weights, each actor's games and action draws follow seeds.agent_run(study_seed, seed) (and, after a resume,
    the step it resumed from); which unrolls form a batch depends on the actors' timing."""
    games = [games] if isinstance(games, str) else list(games)
    config = config if config.games else dataclasses.replace(config, games=tuple(games))
    config.check()  # unclipped rewards without PopArt, among others, stop the run here
    device_ = devices.resolve(device)
    games, num_actions = check_games(games, config)
    fingerprint = runner.fingerprint(config, games=games, seed=seed, study_seed=study_seed, algo=algo)
    work = runner.WorkFolder(out_dir, log_dir, RESUME_FORMAT, fingerprint)
    seeded = seeds.agent_run(study_seed, seed)
    torch.manual_seed(seeded)
    network = IMPALANet(
        num_actions,
        len(games),
        config.architecture,
        popart=config.uses_popart(len(games)),
        full_action_space=config.full_action_space,
        last_action_reward=config.last_action_reward,
        acts_greedily=config.greedy_evaluation,
    )
    network = devices.place(network, device_, torch.channels_last)
    optimizer = torch.optim.RMSprop(
        network.parameters(),
        lr=config.lr,
        alpha=config.rmsprop_alpha,
        eps=config.rmsprop_eps,
        momentum=config.rmsprop_momentum,
    )
    start = 0
    saved = work.resume()
    if saved is not None:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        start = int(saved["iteration"])
        print(
            f"resuming {'+'.join(games)} seed {seed} after learner step {start} "
            f"({start * config.steps_per_update} steps); actors start new games"
        )

    live = work.live(None if saved is None else start * config.steps_per_update)
    save_at = set(config.checkpoint_iterations())
    buffers = make_buffers(config, num_actions)
    actors = Actors(games, config, (seeded, start), network, buffers, fault=_fault)
    try:
        actors.start()
        for iteration in range(start + 1, config.iterations + 1):
            started = time.perf_counter()
            if config.anneal_lr:
                optimizer.param_groups[0]["lr"] = runner.annealed(config.lr, iteration, config.iterations)

            # 1. A batch of full unrolls, copied out (time-major: (T, B, ...)); their buffers go back to the actors.
            indices = [actors.next_full() for _ in range(config.batch_size)]
            batch = {key: value[indices].to(device_) for key, value in buffers.items()}
            actors.release(indices)
            batch = {key: value if key == "task" else value.transpose(0, 1) for key, value in batch.items()}

            # 2. V-trace and one RMSprop step; the actors see the new weights from their next unroll.
            learning = time.perf_counter()
            stats = learn(network, optimizer, config, batch)  # its .item() calls wait for a GPU to finish
            actors.publish(network)
            learned = time.perf_counter()

            # 3. Log (each game's returns apart), checkpoint, report.
            global_step = iteration * config.steps_per_update
            metrics = {
                **{f"losses/{k}": v for k, v in stats.items()},
                "charts/lr": optimizer.param_groups[0]["lr"],
                "charts/steps_per_s": config.steps_per_update / (time.perf_counter() - started),
                # the share of the step the learner computed rather than waited for unrolls (1: the
                # actors keep up, the learner is the bottleneck)
                "charts/learner_utilisation": (learned - learning) / (learned - started),
            }
            metrics.update(_episode_metrics(batch, games))
            if isinstance(network.critic, PopArt):
                for task, game in enumerate(games):
                    metrics[f"popart/mu/{game}"] = float(network.critic.mu[task])
                    metrics[f"popart/sigma/{game}"] = float(network.critic.sigma[task])
            runner.log(live, global_step, metrics)
            if iteration in save_at:
                checkpoints.save(
                    work.checkpoint(global_step),
                    network,
                    algo=algo,
                    protocol=config.protocol,
                    games=games,
                    seed=seed,
                    step=global_step,
                    frames=global_step * get_protocol(config.protocol).frame_skip,
                )
                _write_resume(work, network, optimizer, iteration)
            if progress:
                shown = " ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in metrics.items())
                print(
                    f"{'+'.join(games)} seed {seed} step {global_step}/{config.iterations * config.steps_per_update}"
                    f" {shown}",
                    flush=True,
                )
    finally:
        actors.stop()
    live.end()

    work.finish()  # logs and checkpoints replace the stage's outputs whole
    return Path(out_dir)


def learn(
    network: IMPALANet, optimizer: torch.optim.Optimizer, config: IMPALAConfig, batch: dict[str, torch.Tensor]
) -> dict[str, float]:
    """One learner step on a batch of unrolls (time-major: obs (T+1, B, ...), the rest (T, B), task (B,)).

    Losses are sums over time and batch (torchbeast): the policy gradient weighted by V-trace's advantages,
    baseline_cost x 0.5 x (vs - V)^2, entropy_cost x the negative entropy. Under PopArt the baseline
    regresses the normalised output on the normalised targets and the advantages are divided by sigma;
    the statistics then move toward this batch's targets (outputs preserved). The network reads each
    stack's last_action and last_reward (T+1, B)."""
    obs, task = batch["obs"], batch["task"]
    t_plus_1, b = obs.shape[:2]
    logits, outputs = network.heads(
        obs.reshape(t_plus_1 * b, *obs.shape[2:]), batch["last_action"].reshape(-1), batch["last_reward"].reshape(-1)
    )
    logits = logits.float().view(t_plus_1, b, -1)
    column = network.output_index(task).expand(t_plus_1, b)[..., None]  # each unroll's value output
    outputs = outputs.float().view(t_plus_1, b, -1).gather(2, column).squeeze(2)
    values = network.unnormalize(outputs.detach(), task)  # (T+1, B) in the reward's scale

    # V-trace in the reward's scale, on the learner's policy (target) against the actors' (behaviour).
    target_logits = logits[:-1]
    discounts = config.discount * (~batch["dones"]).float()
    vs, pg_advantages = vtrace(
        log_rhos(target_logits.detach(), batch["logits"], batch["actions"]),
        discounts,
        batch["rewards"],
        values[:-1],
        values[-1],
        rho_bar=config.rho_bar,
        c_bar=config.c_bar,
        pg_rho_bar=config.rho_bar,
    )
    targets = vs
    if isinstance(network.critic, PopArt):  # the baseline's targets and the advantages in the normalised space
        targets = network.critic.normalize(vs, task)
        pg_advantages = network.critic.normalize_advantages(pg_advantages, task)

    pg_loss = -(action_log_probs(target_logits, batch["actions"]) * pg_advantages).sum()
    baseline_loss = config.baseline_cost * 0.5 * ((targets - outputs[:-1]) ** 2).sum()
    log_policy = torch.log_softmax(target_logits, dim=-1)
    entropy = -(log_policy.exp() * log_policy).sum(-1)  # (T, B)
    entropy_loss = -config.entropy_cost * entropy.sum()
    loss = pg_loss + baseline_loss + entropy_loss
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
    optimizer.step()
    if isinstance(network.critic, PopArt):
        network.critic.update(vs, task, beta=config.popart_beta, statistics=config.popart_statistics)
    return {
        "total": loss.item(),
        "policy": pg_loss.item(),
        "baseline": baseline_loss.item(),
        "entropy": entropy.mean().item(),
        "grad_norm": grad_norm.item(),
    }


def check_games(games: list[str], config: IMPALAConfig) -> tuple[list[str], int]:
    """The games' ALE names and their common action count; UserError for a repeat, fewer actors than games,
    or games whose action counts differ (the policy head is shared) unless config.full_action_space."""
    if not games:
        raise UserError("IMPALA needs at least one game")
    counts = {}
    for game in games:
        envs = AgentEnvs(
            game,
            1,
            config.protocol,
            training=True,  # resolves the name
            full_action_space=config.full_action_space,
        )
        counts[envs.game] = envs.num_actions
        envs.close()
    if len(counts) < len(games):
        raise UserError(f"IMPALA games {', '.join(games)} name a game twice; list each once")
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{g} {n}" for g, n in counts.items())
        raise UserError(
            f"IMPALA multi-task games must have the same number of actions (the policy head is "
            f"shared), but they have {shown}; choose games with equal action counts (e.g. AirRaid, "
            f"Carnival, DemonAttack, NameThisGame, Pong, SpaceInvaders: 6 each), or set "
            f"multitask.full_action_space: true to play every game with ALE's 18 actions"
        )
    if config.num_actors < len(counts):
        raise UserError(
            f"IMPALA has {config.num_actors} actors for {len(counts)} games; set "
            f"num_actors (train_agent.impala, or multitask.impala for a multi-task run) to at least "
            f"{len(counts)} (a multiple, for equal shares)"
        )
    return list(counts), next(iter(counts.values()))


def _episode_metrics(batch: dict[str, torch.Tensor], games: list[str]) -> dict[str, float]:
    """Mean raw return and count of the whole games that ended in this batch, per game when several."""
    over = batch["game_over"].cpu()
    returns = batch["game_return"].cpu()
    task = batch["task"].cpu().expand_as(over)
    metrics = {}
    for index, game in enumerate(games):
        finished = returns[over & (task == index)]
        if len(finished):
            suffix = f"/{game}" if len(games) > 1 else ""
            metrics[f"charts/episode_return{suffix}"] = float(finished.mean())
            metrics[f"charts/episodes{suffix}"] = len(finished)
    return metrics


def _write_resume(work: runner.WorkFolder, network: nn.Module, optimizer, iteration: int) -> None:
    """What a resumed run needs beyond the checkpoint: the optimizer and the learner step."""
    state = {
        "iteration": iteration,
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},  # PopArt's stats too
        "optimizer": optimizer.state_dict(),
    }
    work.save(state)
