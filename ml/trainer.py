"""Incremental training of a PyTorch model on a stream of labelled batches."""

import copy
import dataclasses
import logging
import math
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ml.backpressure import BatchSizeController, cuda_memory_probe
from ml.drift import DETECTORS, DriftEvent, DriftMonitor, prequential_errors
from ml.ewc import ElasticWeightConsolidation
from ml.loader import StreamingLoader
from ml.models import CLASSIFICATION, StreamingModel
from ml.oom import is_cuda_oom, release_device_memory
from ml.replay_buffer import ReservoirReplayBuffer

_LOGGER = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

# Reactions to a detected drift.
NO_REACTION = "none"
RESET_OPTIMIZER = "reset_optimizer"
BOOST_LR = "boost_lr"
REINIT_HEAD = "reinit_head"
REACTIONS = (NO_REACTION, RESET_OPTIMIZER, BOOST_LR, REINIT_HEAD)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of :class:`IncrementalTrainer`.

    ``steps_per_pane`` is the number of passes over each pane; ``batch_size``
    is the mini-batch size within a pass. ``max_loss`` is the quality gate's
    bound on the mean training loss of an update (None disables it).

    Drift handling, all off by default:

    * ``drift_detector`` (one of ``ml.drift.DETECTORS``) monitors the
      prequential errors of each pane before training on it, with River's
      keyword arguments ``drift_params`` (a dict or sorted (name, value)
      pairs). ``drift_reaction`` (one of ``REACTIONS``) runs on each
      detection. ``boost_lr`` multiplies the learning rate by
      ``lr_boost_factor`` for ``lr_boost_panes`` panes, counting the pane
      that triggered it.
    * ``replay_size`` > 0 keeps a reservoir sample of that many past
      examples and mixes ``replay_ratio`` replayed examples per new example
      into each mini-batch.
    * ``ewc_lambda`` > 0 adds the Elastic Weight Consolidation penalty.
      Consolidation runs on each detected drift and, when
      ``ewc_every_panes`` > 0, every that many accepted panes. The Fisher
      diagonal is estimated on the newest ``ewc_examples`` trained examples,
      and older consolidations are multiplied by ``ewc_decay``.
    """

    learning_rate: float = 1e-2
    optimizer: str = "adam"
    steps_per_pane: int = 1
    batch_size: int = 64
    weight_decay: float = 0.0
    max_loss: Optional[float] = None
    seed: int = 0
    drift_detector: Optional[str] = None
    drift_params: tuple = ()
    drift_reaction: str = NO_REACTION
    lr_boost_factor: float = 10.0
    lr_boost_panes: int = 5
    replay_size: int = 0
    replay_ratio: float = 0.5
    ewc_lambda: float = 0.0
    ewc_every_panes: int = 0
    ewc_decay: float = 0.9
    ewc_examples: int = 256
    micro_batch_size: Optional[int] = None
    use_loader: Optional[bool] = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}."
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.steps_per_pane < 1:
            raise ValueError(f"steps_per_pane must be at least 1, got {self.steps_per_pane}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ValueError(
                f"micro_batch_size must be between 1 and batch_size={self.batch_size}, "
                f"got {self.micro_batch_size}; leave it unset to step on whole mini-batches."
            )
        if isinstance(self.drift_params, dict):
            object.__setattr__(self, "drift_params", tuple(sorted(self.drift_params.items())))
        self._check_drift_handling()

    def _check_drift_handling(self) -> None:
        if self.drift_detector is not None and self.drift_detector not in DETECTORS:
            raise ValueError(
                f"drift_detector must be one of {DETECTORS} or None, got {self.drift_detector!r}."
            )
        if self.drift_reaction not in REACTIONS:
            raise ValueError(
                f"drift_reaction must be one of {REACTIONS}, got {self.drift_reaction!r}."
            )
        if self.drift_reaction != NO_REACTION and self.drift_detector is None:
            raise ValueError(
                f"drift_reaction={self.drift_reaction!r} needs a drift_detector, for "
                "example drift_detector='adwin'."
            )
        if not self.lr_boost_factor > 0 or self.lr_boost_panes < 1:
            raise ValueError(
                f"lr_boost_factor must be positive and lr_boost_panes at least 1, got "
                f"{self.lr_boost_factor} and {self.lr_boost_panes}."
            )
        if self.replay_size < 0 or not self.replay_ratio >= 0:
            raise ValueError(
                f"replay_size and replay_ratio must be non-negative, got "
                f"{self.replay_size} and {self.replay_ratio}; replay_size=0 turns replay off."
            )
        if self.ewc_lambda < 0 or self.ewc_every_panes < 0 or self.ewc_examples < 1:
            raise ValueError(
                f"ewc_lambda and ewc_every_panes must be non-negative and ewc_examples "
                f"positive, got {self.ewc_lambda}, {self.ewc_every_panes} and "
                f"{self.ewc_examples}; ewc_lambda=0 turns EWC off."
            )
        if self.ewc_lambda > 0 and self.drift_detector is None and self.ewc_every_panes == 0:
            raise ValueError(
                "ewc_lambda > 0 never consolidates without a drift_detector or "
                "ewc_every_panes > 0; set one of them, for example ewc_every_panes=10."
            )


@dataclasses.dataclass
class UpdateResult:
    """The outcome of one :meth:`IncrementalTrainer.learn_many` call."""

    accepted: bool
    loss: float
    examples: int
    reason: Optional[str] = None
    drift_events: List[DriftEvent] = dataclasses.field(default_factory=list)


class QualityGate:
    """Reject an update whose weights are not finite or whose loss is too high."""

    def __init__(self, max_loss: Optional[float] = None):
        self.max_loss = max_loss

    def check(self, model: nn.Module, loss: float) -> Optional[str]:
        """Return None when the update may be published, else the reason."""
        if not math.isfinite(loss):
            return f"training loss is not finite ({loss})"
        if self.max_loss is not None and loss > self.max_loss:
            return f"training loss {loss:.6g} exceeds the bound {self.max_loss:.6g}"
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"parameter {name!r} has non-finite values"
        return None


class IncrementalTrainer:
    """Train a model in place, one batch of labelled examples at a time.

    The optimizer state survives between calls, which is what makes the
    training incremental rather than a restart per pane. Mini-batch order is
    drawn from a generator seeded once, so the same stream of batches gives
    the same weights. An update that fails the quality gate is rolled back:
    the weights and optimizer state return to what they were before it.

    With the drift options of :class:`TrainerConfig`, each call first scores
    the batch with the current weights and feeds those errors to a drift
    detector. A detection triggers the configured reaction (and an EWC
    consolidation) before training. A rollback undoes the training step only,
    so the detection and its reaction stand. :meth:`extra_state` returns all
    state that is not in the model or the optimizer.
    """

    def __init__(
        self,
        model: StreamingModel,
        task: str,
        config: TrainerConfig = TrainerConfig(),
        device: str = "cpu",
    ):
        self.model = model.to(device)
        self.task = task
        self.config = config
        self.device = device
        self.gate = QualityGate(config.max_loss)
        self.optimizer = OPTIMIZERS[config.optimizer](
            self.model.parameters(),
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        self.loss_fn = nn.CrossEntropyLoss() if task == CLASSIFICATION else nn.MSELoss()
        self.generator = torch.Generator().manual_seed(config.seed)
        self._setup_micro_batching()
        self._setup_drift_handling()

    def _setup_micro_batching(self) -> None:
        # The controller halves the micro-batch on out-of-memory errors or
        # high device memory and grows it back by one after good steps, up to
        # the mini-batch. Gradient accumulation keeps every optimizer step on
        # the full mini-batch, so memory pressure does not change the weights.
        initial = self.config.micro_batch_size or self.config.batch_size
        probe = cuda_memory_probe(self.device) if str(self.device).startswith("cuda") else None
        self.micro_batch_controller = BatchSizeController(
            initial=initial, max_size=self.config.batch_size, memory_probe=probe
        )
        self.micro_batch_size = initial
        self.oom_retries = 0
        self.loader_producer_blocked_s = 0.0
        self.loader_consumer_blocked_s = 0.0
        self.loader_max_depth = 0

    def _setup_drift_handling(self) -> None:
        config = self.config
        self.per_example_loss_fn = (
            nn.CrossEntropyLoss(reduction="none") if self.task == CLASSIFICATION
            else nn.MSELoss(reduction="none")
        )
        self.drift_monitor = None
        if config.drift_detector is not None:
            self.drift_monitor = DriftMonitor(
                config.drift_detector, dict(config.drift_params), seed=config.seed
            )
        self.replay = None
        if config.replay_size > 0:
            self.replay = ReservoirReplayBuffer(config.replay_size, seed=config.seed + 1)
        self.ewc = None
        if config.ewc_lambda > 0:
            self.ewc = ElasticWeightConsolidation(config.ewc_lambda, config.ewc_decay)
        self.reaction_counts = {kind: 0 for kind in REACTIONS}
        self.boost_panes_left = 0
        self.panes_since_consolidation = 0
        self._recent_inputs: Optional[torch.Tensor] = None
        self._recent_targets: Optional[torch.Tensor] = None
        if config.drift_reaction == REINIT_HEAD:
            self._head()

    def learn_many(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        event_times: Optional[Sequence[float]] = None,
        model_version: Optional[int] = None,
    ) -> UpdateResult:
        """Train on one batch of examples and return the gate's verdict.

        ``event_times`` (seconds) and ``model_version`` only label the drift
        events in the result. The batch must be in event-time order, because
        the drift detector reads its errors in batch order.
        """
        if len(features) == 0:
            return UpdateResult(accepted=False, loss=float("nan"), examples=0, reason="empty batch")

        drift_events = self._monitor_drift(features, labels, event_times, model_version)
        inputs = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        targets = self._targets(labels)
        self._handle_drift(drift_events)
        snapshot = self._snapshot()

        self.model.train()
        self.model.standardizer.update(inputs)
        loss = self._run_passes(inputs, targets)

        reason = self.gate.check(self.model, loss)
        if reason is not None:
            self._restore(snapshot)
            self._count_down_boost()
            _LOGGER.warning("Rejected a model update on %d examples: %s.", len(features), reason)
            return UpdateResult(
                accepted=False, loss=loss, examples=len(features), reason=reason,
                drift_events=drift_events,
            )

        self._remember(inputs, targets)
        self._count_down_boost()
        return UpdateResult(accepted=True, loss=loss, examples=len(features), drift_events=drift_events)

    @torch.no_grad()
    def predict_many(self, features: np.ndarray) -> np.ndarray:
        """Return class probabilities, or regression values, for ``features``."""
        self.model.eval()
        inputs = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        outputs = self.model(inputs)
        if self.task == CLASSIFICATION:
            outputs = torch.softmax(outputs, dim=-1)
        return outputs.cpu().numpy()

    @torch.no_grad()
    def evaluate_loss(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Return the mean loss of the current weights on labelled examples, without training."""
        self.model.eval()
        inputs = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        return self.loss_fn(self.model(inputs), self._targets(labels)).item()

    def react(self, kind: str) -> None:
        """Apply the drift reaction ``kind`` (one of ``REACTIONS``) and count it.

        ``reset_optimizer`` clears the optimizer's per-parameter state (Adam's
        moments, SGD's momentum) and keeps the learning rate. ``boost_lr``
        sets the learning rate to ``learning_rate * lr_boost_factor`` for the
        next ``lr_boost_panes`` calls of :meth:`learn_many`, restarting the
        count if a boost is already running. ``reinit_head`` re-draws the
        last layer's weights from a generator seeded by ``seed`` and the
        number of earlier re-initialisations, and clears that layer's
        optimizer state. ``none`` only counts.
        """
        if kind not in REACTIONS:
            raise ValueError(f"drift reaction must be one of {REACTIONS}, got {kind!r}.")

        if kind == RESET_OPTIMIZER:
            self.optimizer.state.clear()
        elif kind == BOOST_LR:
            self._set_learning_rate(self.config.learning_rate * self.config.lr_boost_factor)
            self.boost_panes_left = self.config.lr_boost_panes
        elif kind == REINIT_HEAD:
            self._reinitialise_head()

        self.reaction_counts[kind] += 1
        _LOGGER.info("Drift reaction %r applied (%d so far).", kind, self.reaction_counts[kind])

    def _monitor_drift(self, features, labels, event_times, model_version) -> List[DriftEvent]:
        if self.drift_monitor is None:
            return []
        errors = prequential_errors(self.task, labels, self.predict_many(features))
        return self.drift_monitor.update(errors, event_times, model_version)

    def _handle_drift(self, drift_events: List[DriftEvent]) -> None:
        for _ in drift_events:
            self.react(self.config.drift_reaction)
            self._consolidate()

    def _targets(self, labels: np.ndarray) -> torch.Tensor:
        if self.task == CLASSIFICATION:
            return torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        return torch.as_tensor(np.asarray(labels, dtype=np.float32), device=self.device)

    def _run_passes(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        total_loss = 0.0
        total_examples = 0
        for _ in range(self.config.steps_per_pane):
            total_loss, total_examples = 0.0, 0
            order = torch.randperm(len(inputs), generator=self.generator).to(self.device)
            batches = [order[start:start + self.config.batch_size]
                       for start in range(0, len(inputs), self.config.batch_size)]
            for batch_inputs, batch_targets in self._mini_batches(inputs, targets, batches):
                batch_loss = self._step(batch_inputs, batch_targets)
                total_loss += batch_loss * len(batch_inputs)
                total_examples += len(batch_inputs)
        # The last pass's mean loss on the batch's own examples, measured
        # while training, is what the gate judges: it reflects the weights
        # that would be published. Replayed examples and the EWC penalty are
        # left out so the number means the same with and without them.
        return total_loss / total_examples

    def _uses_loader(self) -> bool:
        if self.config.use_loader is not None:
            return self.config.use_loader
        return str(self.device).startswith("cuda")

    def _mini_batches(self, inputs: torch.Tensor, targets: torch.Tensor, batches: list):
        """Yield the mini-batches of one pass, through a prefetching loader if enabled.

        With the loader, a producer thread slices (and on CUDA pins) the next
        mini-batches on the host while the current one trains, and copies
        reach the device without blocking. The batch order is drawn before,
        on this thread, so the loader never changes which examples a step trains on.
        """
        if not self._uses_loader():
            for batch in batches:
                yield inputs[batch], targets[batch]
            return

        host_inputs, host_targets = inputs.cpu(), targets.cpu()
        source = ((host_inputs[batch.cpu()], host_targets[batch.cpu()]) for batch in batches)
        is_cuda = str(self.device).startswith("cuda")
        with StreamingLoader(source, high_watermark=4, device=self.device, pin_memory=is_cuda) as loader:
            yield from loader
            stats = loader.stats()
        self.loader_producer_blocked_s += stats.producer_blocked_s
        self.loader_consumer_blocked_s += stats.consumer_blocked_s
        self.loader_max_depth = max(self.loader_max_depth, stats.max_depth)

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Take one optimizer step, halving the micro-batch on out-of-memory errors."""
        while True:
            micro = self.micro_batch_size
            started = time.perf_counter()
            try:
                batch_loss = self._accumulated_step(inputs, targets, micro)
            except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError.
                if not is_cuda_oom(error) or micro <= 1:
                    raise
                out_of_memory = True
            else:
                out_of_memory = False

            if not out_of_memory:
                latency_ms = (time.perf_counter() - started) * 1000
                self.micro_batch_size = self.micro_batch_controller.record_step(micro, latency_ms)
                return batch_loss

            # Handled outside the except block so the error's traceback,
            # which holds the failed step's tensors, is gone before release.
            self.optimizer.zero_grad(set_to_none=True)
            release_device_memory()
            self.oom_retries += 1
            self.micro_batch_size = min(self.micro_batch_controller.record_oom(micro), max(1, micro // 2))
            _LOGGER.warning(
                "Training step ran out of device memory with micro-batches of %d; retrying with %d.",
                micro, self.micro_batch_size,
            )

    def _accumulated_step(self, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> float:
        """Run one optimizer step over micro-batches; return the mean loss on ``inputs``."""
        self.optimizer.zero_grad(set_to_none=True)
        if micro >= len(inputs):
            loss, batch_loss = self._batch_loss(inputs, targets)
            loss.backward()
            self.optimizer.step()
            return batch_loss

        all_inputs, all_targets = inputs, targets
        if self.replay is not None:
            replayed_inputs, replayed_targets = self.replay.sample(int(round(len(inputs) * self.config.replay_ratio)))
            if replayed_inputs is not None:
                all_inputs = torch.cat([inputs, replayed_inputs.to(self.device)])
                all_targets = torch.cat([targets, replayed_targets.to(self.device)])

        # Each micro-batch contributes its summed loss over the whole count,
        # so the accumulated gradient is that of the mean over the batch.
        total = len(all_inputs)
        own_loss_sum = 0.0
        for start in range(0, total, micro):
            per_example = self.per_example_loss_fn(
                self.model(all_inputs[start:start + micro]), all_targets[start:start + micro]
            )
            (per_example.sum() / total).backward()
            own = per_example[:max(0, len(inputs) - start)]
            own_loss_sum += own.detach().sum().item()
        if self.ewc is not None and self.ewc.anchored:
            self.ewc.penalty(self.model).backward()
        self.optimizer.step()
        return own_loss_sum / len(inputs)

    def _batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple:
        """Return the loss to minimise and the mean loss on ``inputs`` alone."""
        replayed_inputs, replayed_targets = None, None
        if self.replay is not None:
            replay_count = int(round(len(inputs) * self.config.replay_ratio))
            replayed_inputs, replayed_targets = self.replay.sample(replay_count)

        if replayed_inputs is None:
            loss = self.loss_fn(self.model(inputs), targets)
            batch_loss = loss.item()
        else:
            all_inputs = torch.cat([inputs, replayed_inputs.to(self.device)])
            all_targets = torch.cat([targets, replayed_targets.to(self.device)])
            per_example = self.per_example_loss_fn(self.model(all_inputs), all_targets)
            loss = per_example.mean()
            batch_loss = per_example[:len(inputs)].mean().item()

        if self.ewc is not None and self.ewc.anchored:
            loss = loss + self.ewc.penalty(self.model)
        return loss, batch_loss

    def _remember(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep an accepted batch for replay and EWC, and consolidate on schedule."""
        if self.replay is not None:
            self.replay.add_many(inputs.cpu(), targets.cpu())
        if self.ewc is None:
            return

        keep = self.config.ewc_examples
        if self._recent_inputs is None:
            self._recent_inputs, self._recent_targets = inputs[-keep:], targets[-keep:]
        else:
            self._recent_inputs = torch.cat([self._recent_inputs, inputs])[-keep:]
            self._recent_targets = torch.cat([self._recent_targets, targets])[-keep:]

        self.panes_since_consolidation += 1
        every = self.config.ewc_every_panes
        if every > 0 and self.panes_since_consolidation >= every:
            self._consolidate()

    def _consolidate(self) -> None:
        # Runs before training on the pane that revealed a drift, so the
        # recent examples and the weights both still describe the old concept.
        if self.ewc is None or self._recent_inputs is None:
            return
        self.ewc.consolidate(self.model, self.loss_fn, self._recent_inputs, self._recent_targets)
        self.panes_since_consolidation = 0

    def _count_down_boost(self) -> None:
        if self.boost_panes_left == 0:
            return
        self.boost_panes_left -= 1
        if self.boost_panes_left == 0:
            self._set_learning_rate(self.config.learning_rate)
            _LOGGER.info("Learning rate boost over; back to %g.", self.config.learning_rate)

    def _set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def _head(self) -> nn.Module:
        """Return the last submodule that owns parameters: the output layer."""
        head = None
        for module in self.model.network.modules():
            if any(True for _ in module.parameters(recurse=False)):
                head = module
        if head is None or not hasattr(head, "reset_parameters"):
            raise ValueError(
                f"drift_reaction={REINIT_HEAD!r} needs a last layer with reset_parameters() "
                f"(such as nn.Linear), found {type(head).__name__}; choose another drift_reaction."
            )
        return head

    def _reinitialise_head(self) -> None:
        head = self._head()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 7919 * (self.reaction_counts[REINIT_HEAD] + 1))
            head.reset_parameters()
        for parameter in head.parameters():
            self.optimizer.state.pop(parameter, None)

    def extra_state(self) -> Dict[str, torch.Tensor]:
        """Return the drift, replay and EWC state as CPU tensors, for a checkpoint.

        Keys are prefixed ``drift.``, ``replay.``, ``ewc.`` and ``trainer.``;
        none starts with ``state.``, which the model store reserves for the
        optimizer. The dict is empty when every drift option is off.
        """
        tensors = {}
        if self.drift_monitor is not None:
            tensors.update(_prefixed("drift.", self.drift_monitor.state_tensors()))
        if self.replay is not None:
            tensors.update(_prefixed("replay.", self.replay.state_tensors()))
        if self.ewc is not None:
            tensors.update(_prefixed("ewc.", self.ewc.state_tensors()))
            if self._recent_inputs is not None:
                tensors["ewc.recent_inputs"] = self._recent_inputs.detach().cpu().contiguous()
                tensors["ewc.recent_targets"] = self._recent_targets.detach().cpu().contiguous()
        if tensors:
            tensors["trainer.counters"] = torch.tensor(
                [self.boost_panes_left, self.panes_since_consolidation], dtype=torch.int64
            )
            tensors["trainer.reaction_counts"] = torch.tensor(
                [self.reaction_counts[kind] for kind in REACTIONS], dtype=torch.int64
            )
        return tensors

    def load_extra_state(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned; missing parts stay fresh.

        A checkpoint written with an option off (such as version 0) simply
        lacks that option's keys, and keys of options that are now off are
        ignored.
        """
        if self.drift_monitor is not None and "drift.counters" in tensors:
            self.drift_monitor.load_state_tensors(_unprefixed("drift.", tensors))
        if self.replay is not None and "replay.seen" in tensors:
            self.replay.load_state_tensors(_unprefixed("replay.", tensors))
        if self.ewc is not None and "ewc.consolidations" in tensors:
            self.ewc.load_state_tensors(_unprefixed("ewc.", tensors), self.device)
            if "ewc.recent_inputs" in tensors:
                self._recent_inputs = tensors["ewc.recent_inputs"].to(self.device, copy=True)
                self._recent_targets = tensors["ewc.recent_targets"].to(self.device, copy=True)
        if "trainer.counters" in tensors:
            self.boost_panes_left, self.panes_since_consolidation = (
                int(value) for value in tensors["trainer.counters"].tolist()
            )
            counts = tensors["trainer.reaction_counts"].tolist()
            self.reaction_counts = {kind: int(count) for kind, count in zip(REACTIONS, counts)}
            # The optimizer checkpoint already carries the learning rate; this
            # keeps it consistent with the boost count even if it does not.
            boosted = self.config.learning_rate * self.config.lr_boost_factor
            self._set_learning_rate(boosted if self.boost_panes_left > 0 else self.config.learning_rate)

    def _snapshot(self) -> tuple:
        return (
            copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def _restore(self, snapshot: tuple) -> None:
        model_state, optimizer_state = snapshot
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)


def _prefixed(prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {prefix + name: value for name, value in tensors.items()}


def _unprefixed(prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}
