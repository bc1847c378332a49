"""A tiny llama-architecture GGUF with random weights, written in milliseconds for the cloud tests.

Its answers mean nothing, but llama.cpp's grammar (from the JSON schema in `response_format`)
forces them into shape, which is exactly what the cloud client's protocol needs to be tested on.
The vocabulary is SentencePiece-style: control tokens, printable ASCII, and 256 byte tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EMBED, FF, HEADS, CONTEXT = 64, 128, 2, 512


def vocab() -> tuple[list[str], list[float], list[int]]:
    import gguf

    kinds = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [kinds.UNKNOWN, kinds.CONTROL, kinds.CONTROL]
    for code in range(32, 127):
        tokens.append(chr(code))
        types.append(kinds.NORMAL)
    tokens.append("\u2581")  # SentencePiece's space
    types.append(kinds.NORMAL)
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(kinds.BYTE)
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def build_tiny_gguf(path: Path, seed: int = 0) -> Path:
    import gguf

    tokens, scores, types = vocab()
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", weight(len(tokens), EMBED))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), EMBED))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(EMBED, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", weight(EMBED, EMBED))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", weight(FF, EMBED))
    writer.add_tensor("blk.0.ffn_up.weight", weight(FF, EMBED))
    writer.add_tensor("blk.0.ffn_down.weight", weight(EMBED, FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
