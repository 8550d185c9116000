"""The texts of the predict tests (imported by tests/predict/conftest.py and its tests)."""

#: 23 rows: batches of 5 end with a short one; a null text and a one-token text on the way
TEXTS = [f"the cat sat on the mat {' '.join(['and the dog sat on the log'] * (i % 4))}".strip()
         for i in range(12)] + ["a bird flew over the green tree by the river"] * 4 + \
        [None, "the", "a bird flew", "the dog sat on the log", "the river", "green tree", "cat"]
