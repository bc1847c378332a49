"""The causal-LM path: JSONL -> LoRA/QLoRA -> merged HF folder -> GGUF (f16, Q8_0, Q4_K_M) -> artifact."""
