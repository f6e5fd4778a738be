"""What an agent's LLM reads when it calls LatentRAG as a tool: the answer and its sources."""

from __future__ import annotations

from typing import Any

TOOL_DESCRIPTION = (
    "Answers a question over the knowledge base, reasoning and retrieving in several latent "
    "steps (LatentRAG). Input: the full natural-language question. Output: the answer and the "
    "sources it read."
)
_TITLE_CHARS = 80


def tool_content(output: dict[str, Any]) -> str:
    """``"<answer>\\n\\nSources:\\n[1] <title> (id: <id>)\\n..."``: the answer, then each source
    document's title (its ``title`` metadata, else its first line) and store id."""
    lines = [output["answer"] or "(no answer)"]
    docs = output.get("source_documents") or []
    if docs:
        lines += ["", "Sources:"]
    for i, doc in enumerate(docs, 1):
        title = str(doc.metadata.get("title") or doc.page_content.split("\n", 1)[0]).strip()
        if len(title) > _TITLE_CHARS:
            title = title[: _TITLE_CHARS - 1] + "…"
        doc_id = doc.id or doc.metadata.get("_id") or doc.metadata.get("id")
        lines.append(f"[{i}] {title}" + (f" (id: {doc_id})" if doc_id is not None else ""))
    return "\n".join(lines)
