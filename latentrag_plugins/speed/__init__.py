"""The speed tricks: exact fast paths that run only where they are proven equal.

- :mod:`.lean_decoder`: a lean forward for plain Qwen2 and Llama decoders.
- :mod:`.fast_bert`: a lean forward for BERT-style encoders (MiniLM, BGE, E5).
- :mod:`.packed_linear`: bfloat16 products on CPU on cached oneDNN-packed weights.
- :mod:`.precision`: ``--dtype mixed``, a bfloat16 twin of a float32 LLM for wide passes.
"""
