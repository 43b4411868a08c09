"""llmrecipe: pre-train a GPT-2, LoRA SFT, DPO, evaluate — one readable package."""
__version__ = "0.1.0"
