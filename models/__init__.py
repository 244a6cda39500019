"""Model families beside the root model.py (GPT-1 / GPT-2) and their loaders: llama.py (Llama, SmolLM2, Qwen),
gguf_io.py, tokenizer.py, checkpoints.py (a name to a model), packaged.py, lora.py, toy.py (the demo GPTs),
decode.py (the decoding loop and its rules)."""
