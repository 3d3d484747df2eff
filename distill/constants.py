"""Names and tolerances shared by several stages, defined once (standard library only)."""

# Float tolerance for comparing a measured share or difference with a threshold or budget
# (1 text of 1000 is 1e-3, so 1e-9 only absorbs rounding).
EPSILON = 1e-9
# The fast tokenizer's file in a Hugging Face model folder: the student saves it, export and
# quantize copy it beside their graphs.
TOKENIZER_FILE = "tokenizer.json"
