"""The bookkeeping behind TorchServe's handler contract, `preprocess(data) -> inference(batch) -> postprocess(outputs)`,
run so that a request can fail alone.

`BatchState` follows one pass over a batch: which requests already have their answer (rejected while decoding,
explained), which ones reached `inference` (`reached`: the ones `postprocess` answers, in order) and the time
spent in each stage. `subset` lets the handler address some of TorchServe's requests as if they were the whole
batch (headers, ids and response statuses stay those of the real requests), which is how a failed batch is
answered again one request at a time. `as_answers` checks what `postprocess` returned against the requests it
had to answer. `request_error` turns an exception from the handler's own (or its user's) code into the JSON
error that request gets.
"""
import json
import logging
import time
from contextlib import contextmanager

from handlers.errors import BadInput, HandlerError, RequestError

logger = logging.getLogger(__name__)
STAGES = ("preprocess", "inference", "postprocess")


class ContractError(RuntimeError):
    """The handler broke TorchServe's contract (say, `postprocess` answered 3 of 4 requests)."""


class BatchState:
    """One pass of the contract over `n` requests (indices are positions in the data `preprocess` got)."""

    def __init__(self, n: int):
        self.n = n
        self.answers: list = [None] * n
        self.answered = [False] * n
        self.reached: list[int] | None = None  # None: `preprocess` did not say, so every unanswered request
        self.explain: list[tuple[int, object]] = []  # (index, decoded item) set aside for `explain_items`
        self.rejected: list[str] = []  # error kinds, for the TskitBadInput counter

    def answer(self, index: int, answer) -> None:
        self.answers[index] = answer
        self.answered[index] = True

    def unanswered(self) -> list[int]:
        return [i for i in range(self.n) if not self.answered[i]]

    def answered_early(self) -> list[tuple[int, object]]:
        """(index, answer) of the requests answered before inference: rejected while decoding, or explained."""
        return [(i, self.answers[i]) for i in range(self.n) if self.answered[i]]

    def reaching_inference(self) -> list[int]:
        return self.unanswered() if self.reached is None else list(self.reached)


class StageClock:
    """Milliseconds per stage, summed over every pass of a `handle` call (retries included)."""

    def __init__(self):
        self.ms = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - start) * 1000


@contextmanager
def addressed_as(context, processors: list, ids: dict):
    """Within the block, the handler addresses `context`'s requests as `processors` (their headers and response
    statuses: the same RequestProcessor objects, so a status set lands on the real request) with `ids`; the
    real ones come back after it. The one way this library re-addresses requests: a subset of the batch
    (`subset`), or the instances of one KServe request (handlers/protocol.py)."""
    saved = context.request_processor, context.request_ids
    context.request_processor, context.request_ids = processors, ids
    try:
        yield
    finally:
        context.request_processor, context.request_ids = saved


@contextmanager
def subset(context, indices: list[int]):
    """Within the block, request `k` of `context` is request `indices[k]` of the batch TorchServe sent."""
    processors, ids = context.request_processor, context.request_ids or {}
    if processors is None or list(indices) == list(range(len(processors))):
        yield
        return
    with addressed_as(context, [processors[i] for i in indices],
                      {k: ids.get(i, str(i)) for k, i in enumerate(indices)}):
        yield


def one_at_a_time(context, indices, stage: str, err: Exception, answer_one) -> list:
    """After `stage` raised `err` for a batch, answer each request of `indices` on its own (`answer_one(k)`, with
    the context addressing request k alone), so the one that breaks the batch fails alone and the others get
    their answers. The one retry path of both TskitHandler and Guarded."""
    logger.warning("%s failed for a batch of %d requests (%s: %s); answering each on its own", stage, len(indices),
                   type(err).__name__, err)
    answers = []
    for k in indices:
        with subset(context, [k]):
            answers.append(answer_one(k))
    return answers


def header_is_true(context, index: int, name: str) -> bool:
    """Request `index` carries the header `name: True` (how TorchServe flags explain and describe calls);
    False outside a request (no request processors, as when building a drift reference)."""
    processors = getattr(context, "request_processor", None)
    if not processors or index >= len(processors):
        return False
    return str(context.get_request_header(index, name)).lower() == "true"


def is_describe(context, index: int) -> bool:
    """Request `index` is TorchServe's describe call (`GET /models/NAME?customized=true`)."""
    return header_is_true(context, index, "describe")


def as_answers(answers, expected: int, where: str = "postprocess") -> list:
    """`postprocess`'s return value as one answer per request that reached inference, or a ContractError that
    names the counts. A tensor or array becomes its `.tolist()`, as TorchServe's own postprocess does."""
    if hasattr(answers, "tolist") and not isinstance(answers, (list, tuple)):
        answers = answers.tolist()
    if not isinstance(answers, (list, tuple)):
        raise ContractError(f"{where} must return a list with one answer per request, got {type(answers).__name__}")
    if len(answers) != expected:
        raise ContractError(f"{where} returned {len(answers)} answers for the {expected} requests that reached "
                            "inference: return one answer per request, in the order of the batch")
    return list(answers)


def client_error(err: Exception) -> BadInput | None:
    """An exception from code decoding one request that can only mean the request was bad (a library said the
    payload is not an image, not JSON, not base64, not UTF-8): that request's 4xx, not a 500."""
    from binascii import Error as Base64Error

    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return BadInput(f"payload is not an image in a format Pillow can read: {err}", status=415,
                        kind="UnsupportedMediaType")
    if isinstance(err, json.JSONDecodeError):
        return BadInput(f"body is not valid JSON: {err}", kind="MalformedJSON")
    if isinstance(err, Base64Error):
        return BadInput(f"payload is not valid base64: {err}", kind="InvalidBase64")
    if isinstance(err, UnicodeDecodeError):
        return BadInput(f"payload is not valid UTF-8 text: {err}", kind="InvalidText")
    return None


def request_error(err: Exception, where: str, decoding: bool = False) -> RequestError:
    """What a request is answered with when `where` (a hook name) raised `err`: a RequestError (BadInput...) as
    raised, a client error as its 4xx when the request was being decoded, anything else a HandlerError (500)
    naming the hook and the exception (the traceback goes to the model log)."""
    if isinstance(err, RequestError):
        return err
    if decoding:
        found = client_error(err)
        if found is not None:
            return found
    message = str(err) if isinstance(err, ContractError) else f"{where} raised {type(err).__name__}: {err}"
    return HandlerError(message[:500] + " (traceback in the model log)")
