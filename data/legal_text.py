"""The legal task's rows as the paper writes them, whichever source they come from (LegalBench: legal.py; PolicyQA:
policyqa.py): its label names and its input text."""

LABEL_NAMES = ["irrelevant", "relevant"]

# The paper's input, built exactly as in yeruimeng/WTS legal/train.py (instruction, then question and clause;
# the missing space after the first sentence is theirs, and "[SEP]" is plain text to our tokenizers).
INSTRUCTION = ("Given a question and a clause from a privacy policy, determine if the clause contains enough "
               "information to answer the question.")
PREMISE = "Classify if the clause is relevant to answering the question."


def build_text(question, clause):
    return INSTRUCTION + PREMISE + "Question: " + question + " [SEP] Clause: " + clause
