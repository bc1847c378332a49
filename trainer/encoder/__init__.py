"""The encoder path: JSONL -> fine-tuned encoder with intent and BIO heads -> ONNX -> int8 -> artifact."""
