"""``PreparedData``: trajectories plus everything L_ret needs, precomputed once, reusable.

Directory layout (written atomically by :meth:`PreparedData.save`)::

    manifest.json          format, version, encoder id, dim, beta, top_n, counts, top-3 mass
    trajectories.jsonl     the validated trajectories, in order
    retrieval.safetensors  query_emb     (S, dim)   float32  reference subquery embeddings v'_s
                           query_offsets (T + 1,)   int64    trajectory t owns rows
                                                            query_offsets[t]:query_offsets[t+1]
                           topn_rows     (S, top_n) int64    pseudo-relevant docs, rows of doc_emb
                           topn_scores   (S, top_n) float32  their cosine similarity to v'_s
                           doc_emb       (D, dim)   float32  embeddings of every pseudo-relevant doc
    docs.jsonl             {"id": ...} per row of doc_emb (the store's document ids)

Subquery rows follow trajectory order, then step order. Documents are embedded by the frozen
document tower (the same vectors as in the index), so a prepared set is tied to one encoder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..errors import LatentRAGError
from ..io_utils import atomic_path, replaceable_dir
from .trajectories import Trajectory, TrajectoryError, read_trajectories

FORMAT, FORMAT_VERSION = "latentrag-prepared", 1
MANIFEST, TRAJ_FILE, TENSORS, DOCS = (
    "manifest.json",
    "trajectories.jsonl",
    "retrieval.safetensors",
    "docs.jsonl",
)
_TENSOR_KEYS = ("query_emb", "query_offsets", "topn_rows", "topn_scores", "doc_emb")


def refusal(path: str | os.PathLike[str]) -> str | None:
    """Why :meth:`PreparedData.save` would refuse ``path`` (None: it may write there): a file,
    or a non-empty directory that is not prepared data. Check it before preparing."""
    return replaceable_dir(
        path, manifest=MANIFEST, fmt=FORMAT, owned=(MANIFEST, TRAJ_FILE, TENSORS, DOCS),
        what="prepared-data directory",
    )  # fmt: skip


class PreparedDataError(LatentRAGError):
    """A prepared-data directory is missing a file, corrupt, or made for another encoder."""


@dataclass
class PreparedData:
    """Trajectories with reference subquery embeddings and pseudo-relevant documents.

    Attributes:
        trajectories: The trajectories (T).
        query_emb: Reference subquery embeddings ``(S, dim)``, one per step of every trajectory.
        query_offsets: ``(T + 1,)``: trajectory ``t`` owns rows ``offsets[t]:offsets[t + 1]``.
        topn_rows: ``(S, top_n)`` rows of ``doc_emb``: each subquery's pseudo-relevant documents.
        topn_scores: ``(S, top_n)`` their cosine similarities to the reference embedding.
        doc_emb: ``(D, dim)`` document-tower embeddings of all pseudo-relevant documents.
        doc_ids: ``D`` store ids of those documents.
        encoder_id: The document tower that made every embedding.
        beta: Temperature of L_ret's distributions.
        meta: The rest of the manifest (top_n, top-3 mass, source, counts).
    """

    trajectories: list[Trajectory]
    query_emb: torch.Tensor
    query_offsets: torch.Tensor
    topn_rows: torch.Tensor
    topn_scores: torch.Tensor
    doc_emb: torch.Tensor
    doc_ids: list[str]
    encoder_id: str
    beta: float
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.query_emb.shape[1])

    @property
    def top_n(self) -> int:
        """Pseudo-relevant documents per subquery."""
        return int(self.topn_rows.shape[1])

    def check(self) -> None:
        """Check that the tensors agree with each other and with the trajectories.

        Raises:
            PreparedDataError: Describing the first inconsistency.
        """
        t, s = len(self.trajectories), int(self.query_emb.shape[0])
        steps = [len(x.steps) for x in self.trajectories]
        off = self.query_offsets.tolist()
        problems = []
        if len(off) != t + 1 or off[0] != 0 or off[-1] != s:
            problems.append(f"query_offsets {len(off)} entries for {t} trajectories / {s} rows")
        elif [b - a for a, b in zip(off, off[1:])] != steps:
            problems.append("query_offsets do not match the trajectories' step counts")
        if tuple(self.topn_rows.shape) != (s, self.top_n) or self.topn_scores.shape != (
            self.topn_rows.shape
        ):
            problems.append("topn_rows / topn_scores shapes do not match query_emb")
        if self.doc_emb.shape[0] != len(self.doc_ids) or self.doc_emb.shape[1] != self.dim:
            problems.append("doc_emb does not match docs.jsonl or the embedding dimension")
        if s and self.topn_rows.numel() and int(self.topn_rows.max()) >= len(self.doc_ids):
            problems.append("topn_rows point past doc_emb")
        if problems:
            raise PreparedDataError("prepared data is inconsistent: " + "; ".join(problems))

    def manifest(self) -> dict[str, Any]:
        """The manifest :meth:`save` writes."""
        return {
            **self.meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "beta": self.beta,
            "top_n": self.top_n,
            "trajectories": len(self.trajectories),
            "subqueries": int(self.query_emb.shape[0]),
            "documents": len(self.doc_ids),
            "library_version": __version__,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the directory atomically (an existing prepared directory is replaced)."""
        self.check()
        target = Path(path)
        if (why := refusal(target)) is not None:
            raise PreparedDataError(why)
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / TRAJ_FILE).write_text(
                "".join(
                    json.dumps(t.model_dump(mode="json"), ensure_ascii=False) + "\n"
                    for t in self.trajectories
                ),
                encoding="utf-8",
            )
            tensors = {k: getattr(self, k).contiguous() for k in _TENSOR_KEYS}
            save_file(tensors, str(tmp / TENSORS))
            (tmp / DOCS).write_text(
                "".join(json.dumps({"id": i}, ensure_ascii=False) + "\n" for i in self.doc_ids),
                encoding="utf-8",
            )
            (tmp / MANIFEST).write_text(
                json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, encoder_id: str | None = None) -> PreparedData:
        """Load a directory written by :meth:`save`.

        Args:
            path: The directory.
            encoder_id: If given, the data must have been made by this document tower.

        Raises:
            PreparedDataError: A file is missing or corrupt (named), or the encoder differs.
        """
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise PreparedDataError(
                f"{mpath}: missing manifest (is {root} made by `latentrag prepare`?)"
            )
        try:
            man = json.loads(mpath.read_text(encoding="utf-8"))
            if man.get("format") != FORMAT:
                raise ValueError(f"format is {man.get('format')!r}, not {FORMAT!r}")
            if int(man["format_version"]) > FORMAT_VERSION:
                raise ValueError(f"format version {man['format_version']} is too new")
            enc, beta = str(man["encoder_id"]), float(man["beta"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PreparedDataError(f"{mpath}: corrupt manifest ({exc})") from None
        if encoder_id is not None and enc != encoder_id:
            raise PreparedDataError(
                f"{root}: prepared with encoder {enc!r}, but the model's document tower is "
                f"{encoder_id!r}; run `latentrag prepare` with this model"
            )
        try:
            trajs = read_trajectories(root / TRAJ_FILE)
        except TrajectoryError as exc:
            raise PreparedDataError(str(exc)) from None
        tpath = root / TENSORS
        if not tpath.is_file():
            raise PreparedDataError(f"{tpath}: missing tensors file")
        try:
            tensors = load_file(str(tpath))
            missing = [k for k in _TENSOR_KEYS if k not in tensors]
            if missing:
                raise ValueError(f"missing tensors {missing}")
        except Exception as exc:  # safetensors raises its own error types
            raise PreparedDataError(f"{tpath}: corrupt tensors file ({exc})") from None
        dpath = root / DOCS
        try:
            ids = [
                str(json.loads(line)["id"])
                for line in dpath.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PreparedDataError(f"{dpath}: missing or corrupt ({exc})") from None
        keep = {"top3_mass", "calibrated", "source"}
        data = cls(
            trajectories=trajs,
            doc_ids=ids,
            encoder_id=enc,
            beta=beta,
            meta={k: v for k, v in man.items() if k in keep},
            **{k: tensors[k] for k in _TENSOR_KEYS},
        )
        data.check()
        return data
