"""edge-trainer: labelled JSONL -> fine-tuned, exported, evaluated, published artifacts."""
