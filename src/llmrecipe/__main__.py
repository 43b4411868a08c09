"""`python -m llmrecipe` (also what `torchrun -m llmrecipe` runs)."""
from .cli import main

main()
