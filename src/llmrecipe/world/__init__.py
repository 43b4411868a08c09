"""The `tiny` preset's embedded world: deterministic, generated data a few-million-parameter model can
learn on a CPU in minutes (no downloaded or copied text).

Characters with a kind, a home, a colour and a food (cast.py). From them: a pre-training corpus (facts,
stories, arithmetic in words; corpus.py); SFT conversations (questions about the facts, word problems ending
"The answer is N.", and requests carrying IFEval-style verifiable instructions — instructions.py — with a
fixed share of imperfect answers, as real SFT data has); preference pairs (a compliant/correct answer chosen
over a non-compliant/wrong one; rejections.py); and held-out eval analogs written in the real suites'
schemas (multiple choice as MMLU-Pro, word problems as GSM8K, verifiable instructions as IFEval), so the
same code scores them (datasets.py). Everything follows from `seed`.
"""
