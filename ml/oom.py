"""Recovery from device out-of-memory errors by splitting the batch.

A batch that runs out of memory is split in half and each half retried, down
to single elements, so one oversized batch costs a few retries instead of
every element in it. An element that runs out of memory on its own is
returned as a failure rather than raised.
"""

import gc
import logging
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

_LOGGER = logging.getLogger(__name__)

# Messages of the RuntimeErrors that CUDA, cuBLAS and cuDNN raise when an
# allocation fails outside PyTorch's caching allocator, which raises
# torch.OutOfMemoryError itself.
_CUDA_OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


class OomFailure(NamedTuple):
    """An element that ran out of memory even in a batch of one.

    ``index`` is the element's position in the input batch.
    """

    index: int
    element: Any
    reason: str


class OomSplitResult(NamedTuple):
    """The outcome of :func:`run_with_oom_split`.

    ``predictions`` contains one output per element that ran, in input order,
    leaving out the elements in ``failures``. ``splits`` counts the batches
    that were split in half, and ``oom_errors`` the out-of-memory errors
    caught, including those of single elements.
    """

    predictions: list
    failures: list
    splits: int
    oom_errors: int

    def pairs(self, batch: Sequence) -> list:
        """Return ``(element, prediction)`` for each element that ran, in input order."""
        failed = {failure.index for failure in self.failures}
        elements = [element for index, element in enumerate(batch) if index not in failed]
        return list(zip(elements, self.predictions))


def is_cuda_oom(exc: BaseException) -> bool:
    """Return whether ``exc`` reports that a CUDA device ran out of memory."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc)
        return any(marker in message for marker in _CUDA_OOM_MESSAGES)
    return False


def release_device_memory() -> None:
    """Free unreachable tensors and return PyTorch's cached CUDA memory to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_split(
    fn: Callable[[Sequence], Sequence],
    batch: Sequence,
    *,
    is_oom: Callable[[BaseException], bool] = is_cuda_oom,
    on_oom: Optional[Callable[[int, BaseException], None]] = None,
    release: Callable[[], None] = release_device_memory,
) -> OomSplitResult:
    """Run ``fn(batch)``, halving the batch on out-of-memory errors.

    ``fn`` takes a slice of ``batch`` (anything with ``len`` and slicing, such
    as a list or a tensor) and returns one output per element. When it raises
    an error that ``is_oom`` accepts, ``release()`` runs, then
    ``on_oom(failed_batch_size, error)``, and each half of the batch is
    retried the same way. Errors that ``is_oom`` rejects propagate unchanged,
    and the outputs of halves that already ran are then lost.
    """
    if len(batch) == 0:
        return OomSplitResult(predictions=[], failures=[], splits=0, oom_errors=0)

    state = _SplitState(fn, is_oom, on_oom, release)
    state.run(batch, offset=0)
    return OomSplitResult(
        predictions=state.predictions,
        failures=state.failures,
        splits=state.splits,
        oom_errors=state.oom_errors,
    )


class _SplitState:
    """The outputs and counters of one :func:`run_with_oom_split` call."""

    def __init__(self, fn, is_oom, on_oom, release):
        self.fn = fn
        self.is_oom = is_oom
        self.on_oom = on_oom
        self.release = release
        self.predictions = []
        self.failures = []
        self.splits = 0
        self.oom_errors = 0

    def run(self, batch: Sequence, offset: int) -> None:
        """Run ``batch``, whose first element sits at ``offset`` in the input."""
        outputs, reason = self._try(batch)
        if reason is None:
            self.predictions.extend(outputs)
            return

        if len(batch) == 1:
            _LOGGER.warning(
                "Element at index %d ran out of memory on its own: %s", offset, reason
            )
            self.failures.append(OomFailure(offset, batch[0], reason))
            return

        self.splits += 1
        middle = len(batch) // 2
        self.run(batch[:middle], offset)
        self.run(batch[middle:], offset + middle)

    def _try(self, batch: Sequence):
        """Return ``(outputs, None)``, or ``(None, reason)`` after an out-of-memory error."""
        try:
            outputs = list(self.fn(batch))
        except Exception as exc:  # Narrowed by is_oom below.
            if not self.is_oom(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            # Dropping the traceback releases the frames of the failed step,
            # and with them its tensors.
            error = exc.with_traceback(None)
        else:
            if len(outputs) != len(batch):
                raise ValueError(
                    f"fn returned {len(outputs)} outputs for a batch of {len(batch)}; "
                    f"fn must return exactly one output per element."
                )
            return outputs, None

        # The release runs outside the except block because the exception
        # being handled keeps its traceback alive until the block ends.
        self.oom_errors += 1
        self.release()
        if self.on_oom is not None:
            self.on_oom(len(batch), error)
        return None, reason
