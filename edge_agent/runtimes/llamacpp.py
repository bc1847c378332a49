"""llama.cpp's C API through llama-cpp-python's ctypes bindings, wrapped for the GGUF runtime.

`Llama` owns a model, its context and one batch: prompt prefill with a reusable prefix, single
token appends, batched decodes over several sequences (the label branches), logits per row.
`Grammar` owns a parsed GBNF sampler and applies it lazily. Kept apart from `gguf.py` so the
runtime's policy reads without ctypes in the way.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from edge_agent.errors import ArtifactError, InvalidOutput

logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter, unless asked
Row = tuple[int, int, list[int], bool]  # a batch row: token, position, sequences, wants logits

_backend_ready = False
UBATCH: int | None = None  # tokens per micro-batch; None: the whole context (bench/gguf.py measures others)


def _backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


class Llama:
    """Owner of the C handles; every method is blocking and not thread-safe (the pool has one worker)."""

    def __init__(self, path: Path) -> None:
        _backend()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ArtifactError(f"{path}: llama.cpp cannot load it")
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.ctx: Any = None
        self.cached: list[int] = []  # tokens held in sequence 0
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    def open(self, n_ctx: int, n_seq: int, threads: int) -> None:
        """The context: `n_ctx` cells shared by `n_seq` sequences, a batch as large as the context."""
        self.n_ctx, self.n_seq = n_ctx, n_seq
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx
        cparams.n_ubatch = min(UBATCH or n_ctx, n_ctx)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True  # branches share the prompt's cells instead of splitting the cache
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        # llama-cpp-python's own default; llama.cpp's "auto" turns it on, 25 % slower decoding on small CPU models
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ArtifactError(f"{self.path}: llama.cpp cannot make a context of {n_ctx} tokens")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, n_seq)

    def tokenize(self, text: str, special: bool) -> list[int]:
        """Token ids of `text`, never with BOS; `special` parses control-token strings as tokens."""
        raw = text.encode("utf-8")
        room = len(raw) + 8
        buf = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, room, False, special)
        if n < 0:
            raise ArtifactError(f"cannot tokenize a text of {len(raw)} bytes")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        found = self._pieces.get(token)
        if found is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            found = self._pieces[token] = buf.raw[: max(0, n)]
        return found

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def is_eog(self, token: int) -> bool:
        found = self._eog.get(token)
        if found is None:
            found = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return found

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self.vocab))

    def decode(self, rows: list[Row]) -> None:
        """One llama_decode of (token, position, sequences, wants_logits) rows."""
        if len(rows) > self.n_ctx:
            raise ArtifactError(f"{len(rows)} tokens do not fit a batch of {self.n_ctx}")
        b = self.batch
        for i, (token, pos, seqs, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), logits
            for n, seq in enumerate(seqs):
                b.seq_id[i][n] = seq
        b.n_tokens = len(rows)
        status = llama_cpp.llama_decode(self.ctx, b)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status}): context of {self.n_ctx} tokens too small?")

    def logits(self, row: int) -> np.ndarray:
        """The logits of batch row `row` of the last decode (that row must have asked for them)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.array(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)), dtype=np.float32)

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Put `ids` in sequence 0, reusing the longest cached prefix; the next token's logits."""
        keep = 0
        limit = min(len(self.cached), len(ids) - 1)
        while keep < limit and self.cached[keep] == ids[keep]:
            keep += 1
        llama_cpp.llama_memory_seq_rm(self.memory, 0, keep, -1)
        tail = ids[keep:]
        self.decode([(t, keep + i, [0], i == len(tail) - 1) for i, t in enumerate(tail)])
        self.cached = list(ids)
        return self.logits(len(tail) - 1)

    def append(self, tokens: list[int]) -> np.ndarray:
        """More tokens at the end of sequence 0, in one decode; the logits after the last one."""
        at = len(self.cached)
        self.decode([(t, at + i, [0], i == len(tokens) - 1) for i, t in enumerate(tokens)])
        self.cached += tokens
        return self.logits(len(tokens) - 1)

    def branch(self, seq: int, upto: int) -> None:
        """Sequence `seq` shares sequence 0's cells at positions [0, upto)."""
        llama_cpp.llama_memory_seq_cp(self.memory, 0, seq, 0, upto)

    def drop(self, seq: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Grammar:
    """A grammar sampler used lazily, as llama.cpp's own sampler does: the greedy token is checked
    alone first, and the whole vocabulary is masked only when the grammar rejects it."""

    def __init__(self, llm: Llama, text: str) -> None:
        self.pristine = llama_cpp.llama_sampler_init_grammar(llm.vocab, text.encode(), b"root")
        if not self.pristine:
            raise ArtifactError("llama.cpp rejects the grammar built from the fields schema")
        self.sampler = llama_cpp.llama_sampler_clone(self.pristine)
        self.one = (llama_cpp.llama_token_data * 1)()
        self.all = (llama_cpp.llama_token_data * llm.n_vocab)()
        self.view: Any = np.ctypeslib.as_array(self.all)
        self.view["id"] = np.arange(llm.n_vocab)

    def _apply(self, data: Any, size: int) -> None:
        array = llama_cpp.llama_token_data_array(data, size, -1, False)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(array))

    def pick(self, logits: np.ndarray) -> int:
        best = int(np.argmax(logits))
        first: Any = self.one[0]  # a ctypes struct; its fields take plain Python numbers
        first.id, first.logit = best, float(logits[best])
        self._apply(self.one, 1)
        if np.isfinite(first.logit):
            return best
        self.view["logit"] = logits
        self._apply(self.all, len(logits))
        masked = self.view["logit"]
        if not np.isfinite(masked).any():
            raise InvalidOutput("the fields grammar allows no token here (the model cannot finish the JSON)")
        return int(np.argmax(masked))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.sampler, token)

    def reset(self) -> None:
        """A fresh state for the next answer: a copy of the parsed grammar (reset would parse it again)."""
        llama_cpp.llama_sampler_free(self.sampler)
        self.sampler = llama_cpp.llama_sampler_clone(self.pristine)

    def close(self) -> None:
        for sampler in (self.sampler, self.pristine):
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        self.sampler = self.pristine = None
