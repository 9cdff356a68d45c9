"""``blipkit finetune``: fine-tune a BLIP or BLIP-2 checkpoint for captioning, VQA or retrieval, one process or many
(torchrun), writing checkpoints the reference loads, ``metrics.jsonl`` and a plot of the run.

Steps are optimizer steps over a global batch of ``batch_size x processes x grad_accum`` examples, taken in an order
fixed by the seed and the epoch; each process takes its slices of it (``distributed.shard``) and every loss is a sum
divided by the units of the whole global batch, so the step is the same however the batch is split or accumulated.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blipkit.tasks import TASKS, load
from blipkit.train import TASK_OF, checkpoints
from blipkit.train.batches import Collator
from blipkit.train.data import Example, Skipped, read_examples
from blipkit.train.distributed import Processes, join, leave, shard
from blipkit.train.objectives import AnswerObjective, CaptionObjective, Objective, RetrievalObjective

DEFAULT_PROMPT = {"blip": "a picture of ", "blip-2": ""}  # BLIP's captioning prompt; BLIP-2 captions unprompted


@dataclass
class FinetuneOptions:
    task: str  # caption, vqa or retrieval
    model: str
    train: list[str]
    out: str
    val: list[str] | None = None
    epochs: int = 5
    lr: float = 1e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.05
    dtype: str | None = None  # bfloat16: mixed precision (autocast) over float32 weights
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    lora_rank: int = 0
    seed: int = 0
    prompt: str | None = None
    momentum: float = 0.0  # retrieval: BLIP's momentum distillation (0.995 in BLIP) with ...
    queue_size: int = 0  # ... queues of this many past features
    max_steps: int | None = None  # stop after this many steps (a run's length; the schedule still spans the epochs)
    save_every: int | None = None  # steps between checkpoints; default: each epoch's end
    resume: bool = False
    device: str | None = None
    eval_batch_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASK_OF:
            raise ValueError(f"task must be one of {', '.join(TASK_OF)}, got {self.task!r}")
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.lora_rank < 0:
            raise ValueError("lr must be > 0; weight_decay, warmup_steps and lora_rank >= 0")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass
class RunResult:
    steps: int
    out: Path
    final: Path
    skipped: int
    metrics: list[dict[str, Any]]


def finetune(options: FinetuneOptions, on_step: Callable[[int], None] | None = None) -> RunResult:
    """Run ``options`` to the end (or ``max_steps``); ``on_step(step)`` is told after every optimizer step."""
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    processes = join(device)
    try:
        return Run(options, device, processes).train(on_step)
    finally:
        leave(processes)


class Run:
    def __init__(self, options: FinetuneOptions, device: torch.device, processes: Processes) -> None:
        self.options, self.device, self.processes = options, device, processes
        self.out = Path(options.out)
        torch.manual_seed(options.seed + processes.rank)  # dropout and ITM negatives differ by process, as in DDP
        self.loaded = load(TASKS[TASK_OF[options.task]], options.model, device=device)
        self.model = self.loaded.model
        self.family = "blip-2" if hasattr(self.model, "qformer") else "blip"
        prompt = options.prompt if options.prompt is not None else DEFAULT_PROMPT[self.family]
        self.collate = Collator(self.loaded, options.task, prompt)
        self.prompt = prompt
        self._choose_trainable()
        if options.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.objective = self._objective().to(device)
        self.trained = [p for p in self.objective.parameters() if p.requires_grad]
        # The fused kernel (one pass over each tensor instead of ~10 foreach passes): transformers' Trainer default too.
        self.optimizer = torch.optim.AdamW(self.trained, lr=options.lr, weight_decay=options.weight_decay, fused=True)
        self.examples, skipped = read_examples(options.train, options.task)
        self.skipped: list[Skipped] = list(skipped)
        if not self.examples:
            raise ValueError(f"no usable training examples in {', '.join(options.train)}")
        self.global_batch = options.batch_size * processes.world * options.grad_accum
        self.steps_per_epoch = math.ceil(len(self.examples) / self.global_batch)
        self.total_steps = self.steps_per_epoch * options.epochs
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step, self.metrics = 0, []
        self.val = read_examples(options.val, options.task)[0] if options.val else []
        self.wrapped = self._distributed(self.objective)

    # -------------------------------------------------------------------------------------------- set-up
    def _choose_trainable(self) -> None:
        """BLIP trains everything (``--freeze-vision``: all but the ViT). BLIP-2 trains the Q-Former, its queries
        and the projection, with the ViT and the language model frozen; ``--lora-rank`` adds LoRA to the LM."""
        model, options = self.model, self.options
        model.train()
        if self.family == "blip-2":
            model.vision_model.requires_grad_(False)
            model.language_model.requires_grad_(False)
            if options.lora_rank:
                from blipkit.train.lora import add_lora

                add_lora(model.language_model, options.lora_rank)
        elif options.lora_rank:
            raise ValueError("--lora-rank is for BLIP-2's language model; BLIP fine-tunes all its weights")
        if options.freeze_vision:
            model.vision_model.requires_grad_(False)

    def _objective(self) -> Objective:
        if self.options.task == "retrieval":
            return RetrievalObjective(self.model, self.options.momentum, self.options.queue_size)
        if self.options.task == "vqa" and self.family == "blip":
            return AnswerObjective(self.model)
        return CaptionObjective(self.model)

    def _distributed(self, objective: Objective) -> torch.nn.Module:
        if self.processes.world == 1:
            return objective
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=ids)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 0 over the run (BLIP decays by a cosine over its epochs)."""
        warmup = self.options.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # -------------------------------------------------------------------------------------------- the loop
    def train(self, on_step: Callable[[int], None] | None) -> RunResult:
        options, main = self.options, self.processes.main
        if options.resume:
            self._resume()
        elif main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "metrics.jsonl").write_text("")
        bar = self._bar()
        last_step = self.total_steps if options.max_steps is None else min(self.total_steps, options.max_steps)
        while self.step < last_step:
            epoch, index = divmod(self.step, self.steps_per_epoch)
            order = self._order(epoch)
            global_batch = [
                self.examples[i] for i in order[index * self.global_batch : (index + 1) * self.global_batch]
            ]
            started = time.perf_counter()
            loss, parts, seen = self._optimizer_step(global_batch)
            self.step += 1
            record = {"step": self.step, "epoch": epoch + (index + 1) / self.steps_per_epoch, "loss": loss,
                      "lr": self.schedule.get_last_lr()[0], "samples_per_s": seen / (time.perf_counter() - started),
                      **parts}  # fmt: skip
            self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", samples_s=f"{record['samples_per_s']:.1f}")
            epoch_done = self.step % self.steps_per_epoch == 0
            if epoch_done and self.val and main:
                self._log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "val": self.evaluate()})
            if (options.save_every and self.step % options.save_every == 0) or epoch_done:
                self._save_checkpoint()
            if on_step is not None:
                on_step(self.step)
        bar.close()
        final = self.out / "final"
        if main:
            checkpoints.save_model(self.model, self.loaded.processor, final)
            self._plot()
            for skipped in self.skipped:
                print(f"blipkit: skipped {skipped.id}: {skipped.reason}", file=sys.stderr)
        self.processes.barrier()
        return RunResult(self.step, self.out, final, len(self.skipped), self.metrics)

    def _optimizer_step(self, global_batch: list[Example]) -> tuple[float, dict[str, float], int]:
        """One update from this process's micro-batches of ``global_batch``: each loss a sum, divided by the units of
        the whole global batch on every process (and times the process count, which DDP's gradient mean undoes)."""
        options = self.options
        mine = shard(global_batch, self.processes, options.batch_size * options.grad_accum)
        micro = [self.collate(mine[i : i + options.batch_size]) for i in range(0, len(mine), options.batch_size)]
        for batch in micro:
            self._skip(batch.skipped)
        units = self.processes.total(sum(b.units for b in micro))
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        for number, batch in enumerate(micro):
            if not batch.units:
                continue
            last = number == len(micro) - 1
            with self._autocast(), self._no_sync(last):
                loss, pieces = self.wrapped(**batch.to(self.device, torch.float32).tensors)
                (loss * self.processes.world / max(units, 1)).backward()
            total += float(loss.detach())
            for name, value in pieces.items():
                parts[name] = parts.get(name, 0.0) + value
        self.optimizer.step()
        self.schedule.step()
        scale = max(units, 1)
        loss = self.processes.total(total) / scale
        parts = {name: self.processes.total(value) / scale for name, value in parts.items()}
        return loss, parts, len(global_batch)

    def _autocast(self):
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.options.dtype or "")
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _no_sync(self, last: bool):
        import contextlib

        if last or self.processes.world == 1:
            return contextlib.nullcontext()
        return self.wrapped.no_sync()  # gradients are averaged once, after the step's last micro-batch

    def _order(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.options.seed, epoch]).permutation(len(self.examples)).tolist()

    def _skip(self, skipped: list[Skipped]) -> None:
        known = {s.id for s in self.skipped}
        self.skipped += [s for s in skipped if s.id not in known]

    # -------------------------------------------------------------------------------------------- outputs
    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if self.processes.main:
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _bar(self):
        from tqdm import tqdm

        enabled = self.options.progress and self.processes.main
        return tqdm(total=self.total_steps, initial=self.step, desc=f"finetune {self.options.task}", unit="step",
                    disable=not enabled, file=sys.stderr)  # fmt: skip

    def _save_checkpoint(self) -> None:
        states = [checkpoints.random_states()]
        if self.processes.world > 1:
            states = [None] * self.processes.world
            torch.distributed.all_gather_object(states, checkpoints.random_states())
        if self.processes.main:
            state = {
                "step": self.step,
                "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "options": asdict(self.options),
                "skipped": [asdict(s) for s in self.skipped],
                "process_random": states,
            }
            checkpoints.save_checkpoint(self.out, self.step, self.model, self.loaded.processor, state)
        self.processes.barrier()

    def _resume(self) -> None:
        found = checkpoints.last_checkpoint(self.out)
        if found is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint-STEP folder under {self.out}")
        state = checkpoints.load_state(found)
        saved = state["options"]
        for name in ("task", "batch_size", "grad_accum", "seed", "epochs", "lora_rank"):
            if saved[name] != getattr(self.options, name):
                raise ValueError(f"--resume with --{name.replace('_', '-')} {getattr(self.options, name)}, but "
                                 f"{found} was trained with {saved[name]}: resume with the same settings")  # fmt: skip
        if len(state["process_random"]) != self.processes.world:
            raise ValueError(f"{found} was written by {len(state['process_random'])} processes; resume with as many")
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        checkpoints.restore_random_states(state["process_random"][self.processes.rank])
        self.step = state["step"]
        self.skipped = [Skipped(**s) for s in state["skipped"]]
        if self.processes.main:  # the log as it was at the checkpoint: later lines belong to the lost run
            path = self.out / "metrics.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            self.metrics = [r for r in map(json.loads, lines) if r["step"] <= self.step]
            path.write_text("".join(json.dumps(r) + "\n" for r in self.metrics), encoding="utf-8")

    def _plot(self) -> None:
        from blipkit.train.plot import plot_curves

        losses = [(r["step"], r["loss"]) for r in self.metrics if "loss" in r]
        if losses:
            plot_curves({"training loss": losses}, self.out / "loss.png", title=f"finetune {self.options.task}",
                        x_label="step", y_label="loss")  # fmt: skip
        validation = [r for r in self.metrics if "val" in r]
        if validation:
            names = list(validation[0]["val"])
            series = {name: [(r["step"], r["val"][name]) for r in validation] for name in names}
            plot_curves(series, self.out / "validation.png", title=f"held-out {self.options.task}", x_label="step",
                        y_label="score")  # fmt: skip

    # -------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The held-out set's metrics with the weights as they are (``blipkit.train.evaluation``)."""
        from blipkit.train.evaluation import evaluate

        self.model.eval()
        try:
            result = evaluate(self.loaded, self.options.task, self.val, self.prompt, self.options.eval_batch_size)
        finally:
            self.model.train()
        return result
