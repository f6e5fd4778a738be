"""LatentRAG in LangChain: build a compatible store, swap the retriever, answer, read the thoughts.

Runs offline. With no argument it builds a tiny *random* LatentRAG (a tiny Qwen2-shaped LLM,
the offline tokenizer and the MiniLM retriever), so the answers and thoughts are gibberish but
every API works; pass a trained checkpoint directory to see real ones::

    python examples/langchain_quickstart.py            # tiny random model
    python examples/langchain_quickstart.py CKPT_DIR   # a saved LatentRAG checkpoint

Needs ``pip install "latentrag-plugins[langchain]"``; the agent part (step 6) also needs
``pip install langchain`` for ``langchain.agents.create_agent``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import create_retriever_tool
from langchain_core.vectorstores import InMemoryVectorStore

from latentrag_plugins import LatentRAG
from latentrag_plugins.langchain import LatentRAGChain, LatentRAGEmbeddings, LatentRAGRetriever

HERE = Path(__file__).resolve().parent
QUESTION = "In which country was Marie Curie born?"


def load_model(argv: list[str]) -> LatentRAG:
    """A saved checkpoint, or a tiny random model built offline."""
    if len(argv) > 1:
        return LatentRAG.from_pretrained(argv[1])
    from latentrag_plugins.model_zoo import build_llm, build_tokenizer

    tok = build_tokenizer()
    return LatentRAG.init(build_llm("tiny", vocab_size=len(tok)), tokenizer=tok)


def corpus() -> list[Document]:
    """examples/corpus.jsonl as LangChain documents (ids and metadata are carried through)."""
    rows = [json.loads(line) for line in (HERE / "corpus.jsonl").open() if line.strip()]
    return [
        Document(id=r["id"], page_content=r["contents"], metadata={"row": r["id"]}) for r in rows
    ]


class PrintThoughts(BaseCallbackHandler):
    """Prints LatentRAG's custom events, as any callback handler would receive them."""

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == "latentrag_step":
            print(f"  step {data['step']}: {data['action']:8s} -> {data['document_ids']}")
        elif name == "latentrag_thought":
            print(f"  step {data['step']} thought: {data['thought'][:60]!r}")
            print(f"  step {data['step']} subquery: {(data['subquery'] or '')[:60]!r}")


def main(argv: list[str]) -> None:
    model = load_model(argv)

    # 1. A compatible store: embed the documents with the model's own document tower.
    #    Any LangChain VectorStore that searches by vector works (FAISS, Qdrant, PGVector, ...).
    embeddings = LatentRAGEmbeddings(model=model)
    store = InMemoryVectorStore.from_documents(corpus(), embeddings)

    # 2. Swap the retriever: where you had `store.as_retriever(search_kwargs={"k": 4})`.
    retriever = LatentRAGRetriever(model=model, vectorstore=store, k=4, top_k=3, max_steps=3)
    print("retriever, with the thoughts through a callback handler:")
    docs = retriever.invoke(QUESTION, config={"callbacks": [PrintThoughts()]})
    for d in docs:
        m = d.metadata
        print(f"  {d.id}: step {m['latentrag_step']} rank {m['latentrag_rank']} "
              f"score {m['latentrag_score']:.3f}  {d.page_content.splitlines()[0]}")  # fmt: skip

    # 3. The whole retrieval chain: question -> answer, source documents, steps, timings.
    chain = LatentRAGChain(model=model, vectorstore=store, max_steps=3, decode=True)
    out = chain.invoke({"question": QUESTION}, config={"callbacks": [PrintThoughts()]})
    print("chain answer:", repr(out["answer"]))
    print("sources:", [d.id for d in out["source_documents"]])

    # 4. Streaming: one chunk per latent step, then the answer.
    for chunk in chain.stream(QUESTION):
        print("chunk:", chunk["step"] if "step" in chunk else {"answer": chunk["answer"]})

    # 5. An agent's retriever tool, and the thoughts through astream_events. (Async calls use
    #    the store's native async search; InMemoryVectorStore's gives no scores: None here.)
    tool = create_retriever_tool(retriever, "search_corpus", "Search the example corpus.")
    asyncio.run(show_events(tool))

    # 6. The tool in an agent: `langchain.agents.create_agent` (LangChain 1.x; it replaces
    #    LangGraph's deprecated `create_react_agent`). Use your own chat model in place of the
    #    scripted stand-in.
    from langchain.agents import create_agent

    agent = create_agent(ScriptedChatModel(tool_name=tool.name), tools=[tool])
    state = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    print("agent:", state["messages"][-1].content[:100])


class ScriptedChatModel(GenericFakeChatModel):
    """An offline stand-in for your agent's chat model: calls the tool once, then answers with
    the documents' titles."""

    tool_name: str
    messages: Any = None

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
        found = [m for m in messages if m.type == "tool"]
        if found:
            titles = [line for line in found[-1].content.splitlines() if line][:1]
            reply = AIMessage(content=f"The corpus says: {titles}")
        else:
            call = {"name": self.tool_name, "args": {"query": QUESTION}, "id": "call-1"}
            reply = AIMessage(content="", tool_calls=[call])
        self.messages = iter([reply])
        return super()._generate(messages, *args, **kwargs)


async def show_events(tool: Any) -> None:
    print("astream_events of the retriever tool:")
    async for event in tool.astream_events({"query": QUESTION}, version="v2"):
        if event["event"] == "on_custom_event":
            print(f"  {event['name']}: {event['data']}")


if __name__ == "__main__":
    main(sys.argv)
