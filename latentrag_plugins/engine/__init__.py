"""The engine: every request to a model, from any caller, shares its forward passes.

- :class:`Engine` (``model.engine``): continuous batching across threads and event loops.
- :func:`latent_loop`: the same loop for one batch of questions, driven by hand.
- :class:`RequestHandle`, the events (:class:`StepEvent`, :class:`ThoughtEvent`,
  :class:`TokenEvent`) and :class:`StoreSearch` (a store's search function).
"""

from .config import EngineConfig
from .engine import Engine, EngineBusy
from .events import Event, StepEvent, ThoughtEvent, TokenEvent
from .handle import RequestCancelled, RequestHandle
from .loop import SearchRequest, drive, latent_loop, question_prompt, result_docs, search_store
from .request import RequestOptions
from .search import EndRequest, SearchQuery, StoreSearch, search_many

__all__ = [
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EndRequest",
    "Event",
    "RequestCancelled",
    "RequestHandle",
    "RequestOptions",
    "SearchQuery",
    "SearchRequest",
    "StepEvent",
    "StoreSearch",
    "ThoughtEvent",
    "TokenEvent",
    "drive",
    "latent_loop",
    "question_prompt",
    "result_docs",
    "search_many",
    "search_store",
]
