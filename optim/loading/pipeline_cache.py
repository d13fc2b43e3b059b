"""Keep the loaded pipeline between runs; load again only when the selection changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..execution.loaded_pipeline import LoadedPipeline, release_memory, switch_speed
from .loader import LoadRequest, load_pipeline

log = logging.getLogger("qwenfit")


class PipelineCache:
    """One loaded pipeline per distinct :class:`LoadRequest`.

    A different request frees the pipeline held so far before loading the new one, so two
    20B models never sit in memory together; one that differs only in a speed rung the stored weights
    can run switches the held pipeline in place.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: LoadRequest | None = None
        self._loaded: LoadedPipeline | None = None
        self.loads = 0  # how many real loads happened (tests and reports read it)

    def get(
        self,
        request: LoadRequest,
        before_load: Callable[[], None] | None = None,
        checkpoint: Callable[[str], None] | None = None,
    ) -> LoadedPipeline:
        """The pipeline for ``request``, loading it (after ``before_load``) only when needed;
        ``checkpoint`` may cancel the load between components (see :func:`load_pipeline`)."""
        with self._lock:
            if self._loaded is not None and self._request == request:
                return self._loaded
            switched = switch_speed(self._loaded, request) if self._loaded is not None else None
            if switched is not None:  # another speed rung on the same stored weights: no load
                self._loaded, self._request = switched, request
                return switched
            self._drop()
            if before_load is not None:
                before_load()
            log.info("QwenFit: loading %s", request.source.name)
            self._loaded = load_pipeline(request, checkpoint)
            self._request = request
            self.loads += 1
            return self._loaded

    def peek(self) -> LoadedPipeline | None:
        """The pipeline held now, if any (never loads, never waits for a load)."""
        return self._loaded

    def clear(self) -> None:
        """Forget the held pipeline and release its memory."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._loaded is not None:
            log.info("QwenFit: releasing %s", self._loaded.name)
            if self._loaded.engine is not None:
                self._loaded.engine.release()
        self._loaded = None
        self._request = None
        release_memory()
