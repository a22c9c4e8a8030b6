"""`Guarded`: what `tskit build --handler FILE.py` adds to a user's handler that does not derive from
`TskitHandler` (TorchServe's `BaseHandler` or one of its stock handlers, written against TorchServe's docs).

Mixed in before the user's class, it keeps the user's code as written and adds what every handler of this
project has: the archive's files checked against its manifest before the model loads, one JSON answer per
request whatever the user's code raises (a batch that fails is answered again one request at a time, so the
request that breaks it fails alone, with its 4xx when a library said its payload was unreadable, else a JSON
500 with the traceback in the model log), a clear error when `handle` returns the wrong number of answers,
and the `Tskit*` metrics with the time of each stage.
"""
import logging
from contextlib import contextmanager

from handlers.contract import StageClock, as_answers, one_at_a_time, request_error
from handlers.integrity import check_integrity
from handlers.metrics import record_batch

logger = logging.getLogger(__name__)


class Guarded:
    tskit_manifest = None
    _clock: StageClock | None = None
    _stage = "handle"

    def initialize(self, context):
        self.tskit_manifest = check_integrity(context.system_properties["model_dir"],
                                              getattr(context, "model_yaml_config", None) or {})
        super().initialize(context)

    def handle(self, data, context):
        self._clock, rejected = StageClock(), []
        try:
            answers = self.guarded_handle(data, context, rejected, isolate=True)
        finally:
            clock, self._clock = self._clock, None
        record_batch(context, clock.ms, len(data), rejected)
        logger.info("batch of %d: preprocess %.1f ms, inference %.1f ms, postprocess %.1f ms, %d rejected",
                    len(data), clock.ms["preprocess"], clock.ms["inference"], clock.ms["postprocess"], len(rejected))
        return answers

    def guarded_handle(self, data, context, rejected: list, isolate: bool) -> list:
        self._stage = "handle"
        try:
            return as_answers(super().handle(data, context), len(data), where=f"{type(self).__name__}.handle")
        except Exception as err:
            if isolate and len(data) > 1:
                return one_at_a_time(context, range(len(data)), self._stage, err,
                                     lambda k: self.guarded_handle([data[k]], context, rejected, isolate=False)[0])
            error = request_error(err, self._stage, decoding=self._stage == "preprocess")
            if error.status >= 500:
                logger.error("%s failed for a batch of %d", self._stage, len(data), exc_info=err)
            else:
                logger.warning("%d request(s) rejected in %s (%d %s): %s", len(data), self._stage, error.status,
                               error.kind, error.message)
                rejected += [error.kind] * len(data)
            for k in range(len(data)):
                context.set_response_status(error.status, error.message, idx=k)
            return [error.to_response() for _ in data]

    @contextmanager
    def _timed(self, stage: str):
        self._stage = stage
        if self._clock is None:
            yield
        else:
            with self._clock.stage(stage):
                yield

    def preprocess(self, data):
        with self._timed("preprocess"):
            return super().preprocess(data)

    def inference(self, data, *args, **kwargs):
        with self._timed("inference"):
            return super().inference(data, *args, **kwargs)

    def postprocess(self, data):
        with self._timed("postprocess"):
            return super().postprocess(data)
